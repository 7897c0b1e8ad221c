"""The SGLang symbols the plugin touches exist, with the expected signatures, in the installed SGLang;
and the check really fails when one of them goes away or changes (sandboxed in a subprocess)."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from hass_sglang.serving.contract import SYMBOLS, check_contract

pytest.importorskip("sglang")


def test_installed_sglang_satisfies_the_contract():
    assert check_contract() == []


def test_entry_point_is_installed_under_sglangs_group():
    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP

    eps = {ep.name: ep.value for ep in entry_points(group=GENERAL_PLUGINS_GROUP)}
    assert eps.get("hass") == "hass_sglang.serving.plugin:register"


def test_every_sglang_import_of_the_plugin_is_listed():
    """The contract is the one list: each `sglang...` module the plugin modules import appears in it."""
    import ast
    from pathlib import Path

    import hass_sglang

    listed = {s.path.split(":")[0] for s in SYMBOLS}
    pkg = Path(hass_sglang.__file__).parent
    for f in [pkg / "serving" / "plugin.py", *sorted((pkg / "serving" / "models").glob("*.py"))]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sglang"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    assert node.module in listed or full in listed, f"{f.name}: {full} is not in serving.contract.SYMBOLS"


# Each mutation is applied after every listed module is imported (what a renamed or re-signed
# symbol in a new SGLang release looks like to the check), in a child interpreter: nothing
# installed is edited and this process's SGLang stays intact.
_SANDBOX = """
import json, sys
from hass_sglang.serving.contract import check_contract
assert check_contract() == [], check_contract()
import sglang.srt.arg_groups.overrides as overrides
import sglang.srt.arg_groups.resolution_hooks as hooks
results = {}
saved = overrides.declare_resolution
del overrides.declare_resolution
results["removed"] = check_contract()
overrides.declare_resolution = saved
saved = overrides.resolving_view
overrides.resolving_view = lambda args, strict=True: None
results["resigned"] = check_contract()
overrides.resolving_view = saved
saved = hooks._OVERRIDABLE_HOOKS
hooks._OVERRIDABLE_HOOKS = saved - {"handle_speculative_decoding"}
results["unlisted_step"] = check_contract()
print("RESULT" + json.dumps(results))
"""


@pytest.mark.slow
def test_contract_fails_loudly_when_a_symbol_is_removed_or_resigned():
    proc = subprocess.run([sys.executable, "-c", _SANDBOX], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])

    assert len(results["removed"]) == 1 and "overrides:declare_resolution: missing" in results["removed"][0]
    assert len(results["resigned"]) == 1
    assert "resolving_view: parameters ['args', 'strict'] do not start with ['server_args']" in results["resigned"][0]
    assert len(results["unlisted_step"]) == 1
    assert "does not contain 'handle_speculative_decoding'" in results["unlisted_step"][0]


def test_source_order_pins_fail_when_the_behaviour_changes():
    """The top-k/top-p order of SGLang's GPU verification is pinned by snippets in order: the same
    snippets reversed (what an SGLang that cut top-p first would look like) are reported."""
    from hass_sglang.serving.contract import Symbol, check_symbol

    pinned = next(s for s in SYMBOLS if s.path.endswith(":eagle_sample") and s.source_order)
    assert check_symbol(pinned) is None
    reversed_order = Symbol(path=pinned.path, why=pinned.why, source_order=tuple(reversed(pinned.source_order)))
    assert "not found (in order)" in check_symbol(reversed_order)
