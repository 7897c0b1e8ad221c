"""The result folder of a benchmark run (stable layout, documented in docs/benchmarks.md):

    <out>/manifest.json                       what was run: methods (URL or launched draft, server
                                              info), datasets (source, question count), T values,
                                              concurrencies, request settings, versions, status
    <out>/raw/<method>/t<T>_c<C>.jsonl        one line per measured request (append-only)
    <out>/summary.json                        per (method, T, concurrency, dataset|Mean) statistics
    <out>/table.md                            seed 002's tables (+ τ = accept length, + concurrency sweep)
    <out>/plots/speedup.png, accept_length.png, concurrency.png
    <out>/logs/<method>.log                   server logs of --launch

summary.json, table.md and plots/ are always recomputed from raw/ (`report` subcommand), so a
partial or resumed run reports exactly what has been measured.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from pathlib import Path

from hass_sglang.bench import report
from hass_sglang.bench.records import read_records
from hass_sglang.errors import ResultsError
from hass_sglang.io import write_json_atomic

MANIFEST_SCHEMA = "hass_sglang.bench.manifest/1"
SUMMARY_SCHEMA_V1 = "hass_sglang.bench.summary/1"
_RAW_NAME = re.compile(r"^t(?P<t>[-0-9.e+]+)_c(?P<c>\d+)\.jsonl$")


def manifest_path(out: Path) -> Path:
    return Path(out) / "manifest.json"


def load_manifest(out: Path) -> dict | None:
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc.msg})") from exc


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("hass-sglang", "openai", "sglang"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _union(old: list, new: list, key=lambda x: x) -> list:
    """Old entries first, in order; a new entry updates its old namesake (dicts are merged, so a
    method resumed without being started again keeps its recorded server_info)."""
    seen = {key(x): x for x in old}
    for x in new:
        prev = seen.get(key(x))
        seen[key(x)] = {**prev, **x} if isinstance(prev, dict) and isinstance(x, dict) else x
    return list(seen.values())


def merge_manifest(old: dict | None, new: dict) -> dict:
    """Resuming: the request settings must match; methods, datasets, T and concurrencies accumulate."""
    if old is None:
        return new
    if old.get("request") != new["request"]:
        raise ResultsError(f"the results in this folder were measured with {old.get('request')}, "
                           f"this run asks for {new['request']}: use another --out or the same settings")
    for ds_old in old.get("datasets", []):
        for ds_new in new["datasets"]:
            if ds_old["name"] == ds_new["name"] and ds_old["source"] != ds_new["source"]:
                raise ResultsError(f"dataset {ds_new['name']!r} came from {ds_old['source']} in this folder, "
                                   f"now from {ds_new['source']}: rename it or use another --out")
    merged = dict(old)
    merged.update({k: v for k, v in new.items() if k not in ("methods", "datasets", "temperatures", "concurrencies",
                                                             "created")})
    merged["methods"] = _union(old.get("methods", []), new["methods"], key=lambda m: m["name"])
    merged["datasets"] = _union(old.get("datasets", []), new["datasets"], key=lambda d: d["name"])
    merged["temperatures"] = sorted(set(old.get("temperatures", [])) | set(new["temperatures"]))
    merged["concurrencies"] = sorted(set(old.get("concurrencies", [])) | set(new["concurrencies"]))
    return merged


def new_manifest(methods: list[dict], datasets, temperatures, concurrencies, request: dict, baseline: str,
                 mtp: str | None, argv: list[str] | None = None) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {"schema": MANIFEST_SCHEMA, "created": now, "updated": now, "status": "running", "error": None,
            "command": argv if argv is not None else sys.argv, "request": request, "baseline": baseline, "mtp": mtp,
            "methods": methods,
            "datasets": [{"name": d.name, "source": d.source, "questions": len(d.questions)} for d in datasets],
            "temperatures": list(temperatures), "concurrencies": list(concurrencies), "versions": versions(),
            "host": {"platform": platform.platform(), "machine": platform.machine()}}


def write_manifest(out: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(manifest_path(out), manifest, indent=2)


def load_raw(out: Path) -> dict[tuple[str, float, int], list[dict]]:
    raw_dir = Path(out) / "raw"
    result = {}
    for path in sorted(raw_dir.glob("*/*.jsonl")):
        m = _RAW_NAME.match(path.name)
        if not m:
            raise ResultsError(f"{path}: unexpected raw file name (expected t<T>_c<C>.jsonl)")
        recs = read_records(path)
        if recs:
            result[(path.parent.name, float(m["t"]), int(m["c"]))] = recs
    return result


def build_summary(out: Path) -> dict:
    manifest = load_manifest(out)
    if manifest is None:
        raise ResultsError(f"{out}: no manifest.json (not a benchmark result folder)")
    raw = load_raw(out)
    names = [m["name"] for m in manifest["methods"]]
    names += sorted({m for m, _, _ in raw} - set(names))
    datasets = [d["name"] for d in manifest["datasets"]]
    datasets += sorted({r["dataset"] for recs in raw.values() for r in recs} - set(datasets))
    meta = {"max_tokens": manifest["request"]["max_tokens"], "status": manifest.get("status"),
            "run": str(out)}
    return report.summarize(raw, names, datasets, manifest["baseline"], manifest.get("mtp"), meta)


def write_report(out: Path, plots: bool = True) -> dict:
    """summary.json + table.md (+ plots/) from raw/; returns the summary."""
    out = Path(out)
    summary = build_summary(out)
    write_json_atomic(out / "summary.json", summary, indent=2)
    (out / "table.md").write_text(report.render_report(summary), encoding="utf-8")
    if plots and summary["cells"]:
        from hass_sglang.bench.plots import write_plots

        write_plots(summary, load_raw(out), out / "plots")
    return summary


def load_summary(path: Path) -> dict:
    """A run folder (recomputed from raw/) or a summary.json file."""
    path = Path(path)
    if path.is_dir():
        return build_summary(path)
    if not path.is_file():
        raise ResultsError(f"{path}: neither a result folder nor a summary.json")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("schema") == SUMMARY_SCHEMA_V1:  # older runs: the accept length was called "tau"
        for cell in summary["cells"]:
            cell["accept_length"] = cell.pop("tau", None)
        summary["schema"] = report.SUMMARY_SCHEMA
    if summary.get("schema") != report.SUMMARY_SCHEMA:
        raise ResultsError(f"{path}: not a benchmark summary (schema {summary.get('schema')!r})")
    return summary
