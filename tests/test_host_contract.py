"""The fenced host contract: every name the plugin takes from skyarchive is there, as expected, or it steps aside.

And before the fast encoders are trusted, they must equal the host's own
per-post functions on hostile rows; a host whose per-field helpers changed
(monkeypatched here, as a new release could change them) gets its own bytes.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import site
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib
import pytest
import skyarchive
import skyarchive.export
import skyarchive.hookspecs

import export_batching_plugin
from export_batching_plugin import host, plugin, selfcheck
from export_batching_plugin.worker import Recipe, batch_encoder

from .conftest import DID, HOST_VERSION, ArchiveFolder
from .harness import FORMATS, export, insert_rows, make_engine, post_row

RELEASE = f"{HOST_VERSION[0]}.{HOST_VERSION[1]}"


@dataclass(frozen=True)
class Name:
    """One name the plugin takes from skyarchive, and what it expects of it."""

    module: str
    name: str  #: a dotted name is an attribute of a class
    documented: bool
    expects: str
    releases: tuple[str, ...] = ("0.3", "0.4", "0.5")  #: the host releases that have it


NAMES = (
    Name("skyarchive.hookspecs", "skyarchive_export", True, "the export hook: (job) on 0.3, (job, progress) from 0.4"),
    Name("skyarchive.export", "ExportJob.report_progress", True, "the progress channel: (processed, total)", ("0.3",)),
    Name("skyarchive.export", "Progress.update", True, "the progress channel: (processed, total)", ("0.4", "0.5")),
    Name("skyarchive.export", "Progress.status", True, "what the export is doing: status(text)", ("0.5",)),
    Name("skyarchive.errors", "SkyarchiveError", True, "an Exception the CLI prints as one line (exit 1)"),
    Name("skyarchive.errors", "UsageError", True, "a SkyarchiveError for bad input (exit 2)"),
    Name("skyarchive.export", "ExportJob", True, "dataclass: request, config, engine, export_dir, started_at"),
    Name("skyarchive.export", "ExportResult", True, "dataclass: export_dir, post_count, media_count"),
    Name("skyarchive.export", "ExportRequest", True, "frozen dataclass: did, format, since, until, media"),
    Name("skyarchive.export", "selection_criteria", True, "selection_criteria(request) -> WHERE clauses"),
    Name("skyarchive.export", "POST_ORDER", True, "the ORDER BY clauses: created_at DESC, uri ASC"),
    Name("skyarchive.export", "post_record", True, "post_record(post) -> the posts.json object"),
    Name("skyarchive.export", "JSON_OPTIONS", True, "the simplejson options of posts.json (a mapping)"),
    Name(
        "skyarchive.export", "JSONL_OPTIONS", True, "the simplejson options of a posts.jsonl line (a mapping)", ("0.5",)
    ),
    Name("skyarchive.export", "CSV_HEADER", True, "the posts.csv header (a tuple of str)"),
    Name("skyarchive.export", "csv_row", True, "csv_row(post) -> the posts.csv row"),
    Name("skyarchive.export", "write_manifest", True, "write_manifest(export_dir, *, request, exported_at, ...)"),
    Name("skyarchive.models", "posts_table", False, "the posts Table, columns as in the documented schema"),
    Name("skyarchive.models", "media_table", False, "the media Table, columns as in the documented schema"),
)

REPOSITORY = Path(__file__).resolve().parents[1]


def resolve(name: Name) -> Any:
    found: Any = importlib.import_module(name.module)
    for part in name.name.split("."):
        found = getattr(found, part)
    return found


@pytest.mark.parametrize("name", NAMES, ids=lambda n: f"{n.module}.{n.name}")
def test_each_name_exists_in_the_releases_that_have_it(name: Name) -> None:
    if RELEASE in name.releases:
        assert resolve(name) is not None
    else:
        with pytest.raises(AttributeError):
            resolve(name)


def test_the_installed_host_meets_the_contract() -> None:
    assert host.contract_problems() == []
    assert plugin.host_problem() is None
    assert host.hook_arguments() == (("job", "progress") if HOST_VERSION >= (0, 4) else ("job",))


def test_the_contract_page_lists_the_same_names() -> None:
    page = (REPOSITORY / "docs" / "host-contract.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(skyarchive[\w.]*)` \| `([\w.]+)` \| (yes|no) \|", page, re.MULTILINE))
    assert listed == {(n.module, n.name, "yes" if n.documented else "no") for n in NAMES}


def test_the_supported_releases_are_those_pyproject_declares() -> None:
    """Written once, in pyproject.toml; the plugin reads them from its installed metadata."""
    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
    (requirement,) = [r for r in declared if r.startswith("skyarchive")]
    supported = plugin.supported_releases()
    assert supported is not None and supported[2] == requirement
    assert supported[0] <= HOST_VERSION < supported[1], "the host under test must be one of them"


def test_without_its_own_metadata_the_plugin_steps_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise plugin.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(plugin.metadata, "requires", missing)
    problem = plugin.host_problem()
    assert problem is not None and "does not say which skyarchive releases it supports" in problem


def test_the_package_under_test_is_the_installed_one() -> None:
    """The tests import the installed wheel from the environment's site-packages, not the work tree beside them."""
    location = Path(export_batching_plugin.__file__).resolve()
    site_packages = {Path(p).resolve() for p in (*site.getsitepackages(), sysconfig.get_paths()["purelib"])}
    assert site_packages & set(location.parents), (location, site_packages)
    assert REPOSITORY / "export_batching_plugin" not in location.parents, location


# -- a host the plugin is not proven on: it steps aside, with one warning line per export ----------


def host_alone_and_plugin(archive_folder: ArchiveFolder) -> tuple[Any, Any]:
    archive_folder.seed(30)
    host_run = archive_folder.cli("export", "--did", DID, "--format", "csv", "--out", str(archive_folder.root / "host"))
    archive_folder.enable_plugin(threshold=0)
    plugin_run = archive_folder.cli(
        "export", "--did", DID, "--format", "csv", "--out", str(archive_folder.root / "plugin")
    )
    return host_run, plugin_run


def manifest(result: Any) -> dict[str, Any]:
    return dict(json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize("version", ["0.6.0", "1.0", "0.2.9", None])
def test_a_host_release_outside_the_range_gets_its_own_exporter(
    archive_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch, version: str | None
) -> None:
    monkeypatch.setattr(plugin, "installed_host_version", lambda: version)
    host_run, plugin_run = host_alone_and_plugin(archive_folder)
    assert plugin_run.code == 0, plugin_run.err
    assert manifest(plugin_run)["exporter"].startswith("skyarchive ")
    assert (plugin_run.export_dir / "posts.csv").read_bytes() == (host_run.export_dir / "posts.csv").read_bytes()
    (warning,) = [line for line in plugin_run.err.splitlines() if not line.startswith("export: ")]
    assert warning == (
        f"skyarchive: WARNING: export_batching: skyarchive {version} is not a release this plugin is proven on"
        " (skyarchive>=0.3,<0.6); this export uses skyarchive's own exporter. Install an export-batching-plugin"
        " release made for this skyarchive, or a skyarchive it supports, to export in batches again."
    )


class LaterHookspecs:
    """A later skyarchive's export hook, with arguments of other names (as 0.4 added ``progress``)."""

    @pluggy.HookspecMarker("skyarchive")(firstresult=True)
    def skyarchive_export(self, request: Any, destination: Any, progress: Any) -> Any:
        """The export hook, renamed arguments."""


class RenamedHookspecs:
    """A later skyarchive whose export hook has another name."""

    @pluggy.HookspecMarker("skyarchive")(firstresult=True)
    def skyarchive_export_posts(self, job: Any) -> Any:
        """The export hook, renamed."""


def test_a_later_host_whose_hook_takes_other_arguments_still_starts_and_exports(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pluggy rejects a hookimpl naming an argument the spec lacks, and skyarchive then refuses to start."""
    monkeypatch.setattr(plugin, "installed_host_version", lambda: "0.6.0")
    manager = pluggy.PluginManager("skyarchive")
    manager.add_hookspecs(LaterHookspecs)
    manager.register(plugin.create_plugin({}), name="export_batching")
    manager.check_pending()
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        assert manager.hook.skyarchive_export(request=object(), destination=object(), progress=object()) is None
    assert caplog.text.count("skyarchive 0.6.0 is not a release this plugin is proven on") == 1
    assert "this export uses skyarchive's own exporter" in caplog.text


@pytest.mark.parametrize("gone", ["the hook", "the hookspecs module"])
def test_a_later_host_without_the_export_hook_still_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, gone: str
) -> None:
    monkeypatch.setattr(plugin, "installed_host_version", lambda: "0.6.0")
    if gone == "the hook":
        monkeypatch.delattr(skyarchive.hookspecs, "skyarchive_export")
    else:
        monkeypatch.delattr(skyarchive, "hookspecs")
        monkeypatch.setitem(sys.modules, "skyarchive.hookspecs", None)  # importing it raises ImportError
    manager = pluggy.PluginManager("skyarchive")
    manager.add_hookspecs(RenamedHookspecs)
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        manager.register(plugin.create_plugin({}), name="export_batching")
    manager.check_pending()  # a hookimpl of a hook the host does not specify would fail here
    assert manager.hook.skyarchive_export_posts(job=object()) is None
    assert caplog.text.count("skyarchive 0.6.0 is not a release this plugin is proven on") == 1
    assert "exports use skyarchive's own exporter" in caplog.text


def test_a_host_missing_a_name_gets_its_own_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release in range that dropped a helper: the plugin still loads, and steps aside."""
    monkeypatch.delitem(sys.modules, "export_batching_plugin.host")
    monkeypatch.delattr(export_batching_plugin, "host")
    monkeypatch.delattr(skyarchive.export, "write_manifest")
    problem = plugin.host_problem()
    assert problem is not None and "lacks a name this plugin uses" in problem and "write_manifest" in problem
    assert isinstance(plugin.create_plugin({}), plugin.StepAside)


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "problem"),
    [
        (skyarchive.export, "csv_row", lambda post, labels: [], "csv_row(post)"),
        (skyarchive.export, "CSV_HEADER", ["URI"], "CSV_HEADER"),
        (host, "posts_table", host.media_table, "the posts table's columns"),
    ],
)
def test_a_host_whose_names_changed_shape_gets_its_own_exporter(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, replacement: Any, problem: str
) -> None:
    monkeypatch.setattr(owner, name, replacement)
    assert host.contract_problems() == [problem]
    found = plugin.host_problem()
    assert found is not None and found.endswith(f"differs from what this plugin relies on: {problem}")
    assert isinstance(plugin.create_plugin({"batch_size": 10}), plugin.StepAside)


def test_config_errors_come_first_even_on_an_unsupported_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "installed_host_version", lambda: "0.6.0")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        plugin.create_plugin({"batch_size": 0})


# -- the self-check of the fast encoders -----------------------------------------------------------


def changed(name: str, change: Callable[[Any], Any]) -> Callable[..., Any]:
    original = getattr(skyarchive.export, name)

    @functools.wraps(original)
    def function(value: Any) -> Any:
        return change(original(value))

    return function


#: A change a later host release could make: (the name, how, whether the fast encoders then step aside). The
#: fast CSV path uses the plugin's own copies of media_hashes and label_values (the child process imports no
#: skyarchive), so a change there is one the self-check must see.
HOST_CHANGES: dict[str, tuple[str, Callable[[Any], Any], bool]] = {
    "media hashes": ("media_hashes", lambda hashes: [h.upper() for h in hashes], True),
    "post record": ("post_record", lambda record: {**record, "has_media": int(record["has_media"])}, True),
    "csv row": ("csv_row", lambda row: [*row[:9], row[9].upper(), *row[10:]], True),
    "flags": ("_flag", lambda flag: "yes" if flag == "true" else "no", True),
}
if HOST_VERSION >= (0, 4):
    HOST_CHANGES["label rendering"] = ("label_values", lambda values: [v.replace("!", "") for v in values], True)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("change", list(HOST_CHANGES))
def test_a_host_whose_encoding_changed_gets_its_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, change: str, format: str
) -> None:
    name, how, falls_back = HOST_CHANGES[change]
    monkeypatch.setattr(skyarchive.export, name, changed(name, how))
    engine = make_engine(tmp_path / "a.db")
    embed = '{"images": [{"fullsize": "https://cdn/img/did:plc:x/bafkreiabc@jpeg"}]}'
    labels = '[{"val": "!warn"}, {"val": "spam"}]'
    insert_rows(engine, [post_row(n, embed_data=embed, labels=labels, is_reply=n % 2) for n in range(12)])
    alone = export(engine, tmp_path / "host", settings=None, format=format)
    batched = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": 5}, format=format)
    engine.dispose()
    assert batched.manifest is not None and batched.manifest["exporter"].startswith("export_batching")
    assert batched.posts_bytes == alone.posts_bytes
    assert (selfcheck.make_encoders().fallback_reason is not None) is falls_back
    assert caplog.text.count("encodes posts differently from this plugin's fast encoders") == int(falls_back)


def test_the_self_check_passes_on_the_installed_host_and_covers_every_column() -> None:
    encoders = selfcheck.make_encoders()
    assert encoders.fallback_reason is None
    rows = selfcheck.probe_rows()
    for index, column in enumerate(host.POST_COLUMNS):
        kinds = {type(row[index]) for row in rows}
        assert len(kinds) >= 2, f"the probes give {column} only {kinds}"


@pytest.mark.skipif(HOST_VERSION < (0, 5), reason="JSON Lines: skyarchive 0.5")
@pytest.mark.parametrize(
    "options",
    [{"ensure_ascii": True, "separators": (",", ":")}, {"ensure_ascii": False, "separators": (", ", ": ")}],
    ids=["ASCII only", "spaced"],
)
def test_a_host_whose_json_lines_changed_gets_its_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    monkeypatch.setattr(skyarchive.export, "JSONL_OPTIONS", options)
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n, text="é 👩‍👩‍👧", embed_data='{"a": [1, "ü"]}') for n in range(12)])
    alone = export(engine, tmp_path / "host", settings=None, format="jsonl")
    batched = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": 5}, format="jsonl")
    engine.dispose()
    assert batched.manifest is not None and batched.manifest["exporter"].startswith("export_batching")
    assert batched.posts_bytes == alone.posts_bytes
    reason = selfcheck.make_encoders().fallback_reason
    assert reason is not None and reason.startswith("posts.jsonl differs")


def fast(format: str) -> Any:
    """The fast encoder of ``format`` on the installed host, as the export builds it."""
    per_post = host.per_post()
    recipe = Recipe(format, per_post.json_options, per_post.jsonl_options, host.has_labels(per_post.csv_header))
    return batch_encoder(recipe, host.SkyarchiveError)


def test_the_self_check_sees_a_one_byte_difference() -> None:
    encode_csv = fast("csv")

    def off_by_one(rows: Any, sizes: Any) -> Any:
        lines = b"".join(encode_csv(rows, sizes))
        yield lines.replace(b",  spaced  ,", b", spaced  ,") if len(rows) == 1 else lines

    reason = selfcheck.self_check(host.per_post(), fast("json"), off_by_one)
    assert reason is not None and reason.startswith("posts.csv differs on the self-check's row")


def test_a_host_that_drops_media_hashes_gets_its_own_csv_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """media_hashes is undocumented: a release may drop it (and write MediaFiles its own way). The plugin needs
    none of it (it has its own copy); the self-check sees the host's rows differ, and the host's code writes them."""
    monkeypatch.delattr(skyarchive.export, "media_hashes", raising=True)
    original_csv_row = skyarchive.export.csv_row
    monkeypatch.setattr(skyarchive.export, "csv_row", functools.wraps(original_csv_row)(lambda post: ["custom"]))
    assert host.contract_problems() == []
    encoders = selfcheck.make_encoders()
    assert encoders.fallback_reason is not None and encoders.fallback_reason.startswith("posts.csv differs")
    assert b"".join(encoders.by_format["csv"]([selfcheck.probe_rows()[0]], [0])) == b"custom\r\n"


def test_a_host_that_adds_a_csv_column_gets_its_own_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = skyarchive.export.csv_row
    monkeypatch.setattr(skyarchive.export, "CSV_HEADER", (*skyarchive.export.CSV_HEADER, "Lang"))
    monkeypatch.setattr(skyarchive.export, "csv_row", functools.wraps(original)(lambda post: [*original(post), "en"]))
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(9)])
    alone = export(engine, tmp_path / "host", settings=None, format="csv")
    batched = export(engine, tmp_path / "plugin", settings={"threshold": 0, "batch_size": 4}, format="csv")
    engine.dispose()
    assert batched.manifest is not None and batched.manifest["exporter"].startswith("export_batching")
    assert batched.posts_bytes == alone.posts_bytes and alone.posts_bytes is not None
    assert alone.posts_bytes.splitlines()[0].endswith(b",Lang")
    header = ", ".join(skyarchive.export.CSV_HEADER)
    assert selfcheck.make_encoders().fallback_reason == f"its posts.csv header is {header}"


def test_the_self_check_also_joins_rows() -> None:
    """A fast encoder right on each row alone but wrong on several together (a separator, say) is caught."""
    encode_json = fast("json")

    def wrong_when_joined(rows: Any, sizes: Any) -> Any:
        items = list(encode_json(rows, sizes))
        return items if len(rows) == 1 else [memoryview(b"".join(bytes(i) for i in items))]

    reason = selfcheck.self_check(host.per_post(), wrong_when_joined, fast("csv"))
    assert reason == "posts.json differs on the self-check's rows together"


def test_no_package_metadata_for_skyarchive_means_stepping_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise plugin.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(plugin.metadata, "version", missing)
    assert plugin.installed_host_version() is None
    assert plugin.host_problem() == "skyarchive None is not a release this plugin is proven on (skyarchive>=0.3,<0.6)"
