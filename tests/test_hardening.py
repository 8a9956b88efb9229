"""Issue 7, items 2, 3 and 5: damaged weight files are refused by name, the code holds none of the
forbidden patterns, and an untrusted run directory or data file cannot run code or reach files
outside the data root."""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from vlm_resampler.runs import layout
from vlm_resampler.runs.checkpoint import CheckpointMismatch

REPO = Path(__file__).resolve().parents[1]


# ---- a saved stage, without training -------------------------------------------------------
@pytest.fixture(scope="module")
def saved_stage(smoke_config, tmp_path_factory):
    """A finetune-stage checkpoint (model.safetensors and adapter/) written by the real save path,
    in a run dir with its resolved_config.yaml."""
    from vlm_resampler.runs.load import build_model
    from vlm_resampler.training.run import ALWAYS_SAVED, resolved_container, save_stage_checkpoint
    from vlm_resampler.training.stages import attach_stage_lora

    from conftest import finetune_save_fields

    cfg = resolved_container(smoke_config())
    run_dir = tmp_path_factory.mktemp("hardening") / "run"
    run_dir.mkdir()
    (run_dir / layout.RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg))
    model = build_model(cfg["model"], seed=int(cfg["seed"]))
    lora = attach_stage_lora(model, OmegaConf.create(cfg["stage"]["finetune"]))
    save_stage_checkpoint(
        model, run_dir / "finetune", list(ALWAYS_SAVED), **finetune_save_fields(cfg, lora), train_summary={}
    )
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


ADAPTER = f"{layout.ADAPTER_DIR}/{layout.ADAPTER_WEIGHTS}"


# ---- 2. integrity -------------------------------------------------------------------------
@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["flipped-byte", "truncated"])
@pytest.mark.parametrize("rel", [layout.WEIGHTS, ADAPTER])
def test_a_damaged_weight_file_is_refused_naming_it(saved_stage, tmp_path, rel, damage):
    from vlm_resampler import load_from_run

    run = copy_run(saved_stage, tmp_path)
    damage(run / "finetune" / rel)
    with pytest.raises(CheckpointMismatch, match=rf"{run / 'finetune' / rel}: sha256 .* differs"):
        load_from_run(run)


@pytest.mark.parametrize("rel", [layout.WEIGHTS, ADAPTER])
def test_a_truncated_weight_file_is_refused_by_name_also_unverified(saved_stage, tmp_path, rel, caplog):
    from vlm_resampler import load_from_run

    run = copy_run(saved_stage, tmp_path)
    truncate(run / "finetune" / rel)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(CheckpointMismatch, match=rf"{run / 'finetune' / rel}: cannot be read"),
    ):
        load_from_run(run, verify=False)
    assert "not verified (--no-verify / verify=false)" in caplog.text


def test_a_run_trained_on_another_build_of_its_backbones_is_refused_naming_both(saved_stage, tmp_path):
    """The offline default's pretrained backbones are built per cache, and another machine's build
    differs (docs/grounding.md, "Builds differ between machines"): a run trained on one is never
    loaded on another's. Here the run's record names a build this cache does not hold."""
    from vlm_resampler import load_from_run

    run = copy_run(saved_stage, tmp_path)
    meta_path = run / "finetune" / layout.METADATA
    meta = json.loads(meta_path.read_text())
    role, backbone = sorted(meta["backbones"].items())[0]
    here = backbone["fingerprint"]
    backbone["fingerprint"] = "sha256:" + "0" * 64
    meta_path.write_text(json.dumps(meta))
    message = (
        rf"{role} backbone {re.escape(repr(backbone['name_or_path']))} has fingerprint {re.escape(repr(here))}, "
        rf"but the checkpoint was trained on 'sha256:0{{64}}'"
    )
    with pytest.raises(CheckpointMismatch, match=message):
        load_from_run(run)


def change_dtype(state: dict) -> str:
    key = sorted(state)[0]
    state[key] = state[key].double()
    return rf"{re.escape(key)}: model expects torch.float32, file has torch.float64"


def add_key(state: dict) -> str:
    key = sorted(state)[0]
    state[key + "_extra"] = state[key].clone()
    return rf"unexpected 1 tensor\(s\): {re.escape(key)}_extra"


def drop_key(state: dict) -> str:
    key = sorted(state)[-1]
    del state[key]
    return rf"missing 1 tensor\(s\): {re.escape(key)}"


@pytest.mark.parametrize("change", [change_dtype, add_key, drop_key], ids=["dtype", "extra-key", "missing-key"])
@pytest.mark.parametrize("rel", [layout.WEIGHTS, ADAPTER])
def test_a_changed_weight_file_with_its_sha256_re_recorded_is_refused_naming_the_tensor(
    saved_stage, tmp_path, rel, change
):
    """The integrity check passes (the digest is recorded again); the strict load is what refuses."""
    from safetensors.torch import load_file, save_file

    from vlm_resampler import load_from_run
    from vlm_resampler.runs.atomic import sha256_file

    run = copy_run(saved_stage, tmp_path)
    path = run / "finetune" / rel
    state = load_file(str(path))
    expected = change(state)
    save_file(state, str(path), metadata={"format": "pt"})
    meta_path = run / "finetune" / layout.METADATA
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"][rel] = sha256_file(path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatch, match=rf"{re.escape(str(path))}:\n  (.*\n  )*{expected}"):
        load_from_run(run)


def test_no_verify_is_logged_naming_the_files_not_checked(saved_stage, caplog):
    from vlm_resampler import load_from_run

    with caplog.at_level(logging.WARNING):
        load_from_run(saved_stage, verify=False)
    line = next(r.getMessage() for r in caplog.records if "not verified" in r.getMessage())
    assert str(saved_stage / "finetune" / layout.WEIGHTS) in line and ADAPTER in line and "fingerprints" in line


@pytest.mark.parametrize("show_traceback", [False, True], ids=["short", "VLM_RESAMPLER_TRACEBACK=1"])
def test_eval_of_a_damaged_checkpoint_exits_1_naming_the_file_without_a_traceback_unless_asked(
    saved_stage, tmp_path, show_traceback, monkeypatch
):
    from conftest import run_cli

    run = copy_run(saved_stage, tmp_path)
    flip_byte(run / "finetune" / layout.WEIGHTS)
    monkeypatch.setenv("VLM_RESAMPLER_TRACEBACK", "1" if show_traceback else "0")
    done = run_cli("eval.py", f"checkpoint_dir={run / 'finetune'}", "debug=smoke")
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{run / 'finetune' / layout.WEIGHTS}: sha256" in done.stderr
    if show_traceback:
        assert "Traceback (most recent call last)" in done.stderr and "CheckpointMismatch" in done.stderr
    else:
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert (
            f"error: eval of {run / 'finetune'}:" in done.stderr
            and "VLM_RESAMPLER_TRACEBACK=1 shows the traceback" in done.stderr
        )


def test_no_verify_on_the_eval_command_line_means_verify_false():
    from vlm_resampler.evaluation.cli import translate_argv

    assert translate_argv(["--checkpoint-dir", "runs/x", "--no-verify"]) == ["checkpoint_dir=runs/x", "verify=false"]


# ---- 3. forbidden patterns in the code ------------------------------------------------------
# No opt-out comment. A broad handler (`except Exception`/`BaseException`) must re-raise, exit or
# carry the error on (use the name it binds: noted in a report, returned); no handler of any type
# may `pass` or `continue` past an error it does not use; bare `except:` is refused outright.


def source_files() -> list[Path]:
    return sorted([*(REPO / "vlm_resampler").rglob("*.py"), *(REPO / "launch").glob("*.py")])


def _name(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def forbidden_patterns(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, str(path))
    found = []

    def at(node, what):
        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler):
            if node.type is None:
                at(node, "bare `except:`")
                continue
            body = list(ast.walk(ast.Module(body=node.body, type_ignores=[])))
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            broad = any(_name(t) in ("Exception", "BaseException") for t in types)
            raises = any(
                isinstance(n, ast.Raise)
                or (isinstance(n, ast.Call) and _name(n.func) in ("sys.exit", "exit", "os._exit"))
                for n in body
            )
            uses_error = node.name is not None and any(isinstance(n, ast.Name) and n.id == node.name for n in body)
            skips = any(isinstance(n, (ast.Pass, ast.Continue)) for n in body)
            if broad and not raises and not uses_error:
                at(node, "broad `except` that neither re-raises, exits nor uses the error")
            elif skips and not raises and not uses_error:
                at(node, "`except` that passes over the error (`pass`/`continue`) without using it")
        elif isinstance(node, ast.Call):
            func = _name(node.func)
            strict = _kw(node, "strict")
            if isinstance(strict, ast.Constant) and strict.value is False:
                at(node, "strict=False")
            # strict passed by position: load_state_dict(state, False), safetensors' load_model(model, path, False)
            position = {"load_state_dict": 1, "load_model": 2}.get(func.split(".")[-1])
            if position is not None and len(node.args) > position:
                value = node.args[position]
                if isinstance(value, ast.Constant) and value.value is False:
                    at(node, "strict=False (by position)")
            if func == "torch.load" or func.endswith(".torch.load"):
                weights_only = _kw(node, "weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    at(node, "torch.load without weights_only=True")
            if func in ("yaml.load", "yaml.load_all"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if _name(loader).split(".")[-1] not in ("SafeLoader", "CSafeLoader"):
                    at(node, f"{func} without a safe loader")
            if func in (
                "yaml.unsafe_load",
                "yaml.full_load",
                "pickle.load",
                "pickle.loads",
                "pickle.Unpickler",
                "dill.load",
                "dill.loads",
                "marshal.load",
                "marshal.loads",
                "torch.serialization.load",
            ):
                at(node, func)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            module = getattr(node, "module", None) or ""
            if "pickle" in names or module == "pickle" or "dill" in names:
                at(node, "imports pickle")
            if module in ("torch", "torch.serialization") and "load" in names:
                at(node, f"from {module} import load (an unchecked torch.load)")
    return found


def test_the_code_holds_none_of_the_forbidden_patterns():
    files = source_files()
    assert len(files) > 40
    problems = [p for f in files for p in forbidden_patterns(f)]
    assert not problems, "\n".join(problems)


def test_the_pattern_search_finds_each_forbidden_pattern(tmp_path, monkeypatch):
    """The search itself: each pattern in a planted file is found, the allowed forms are not."""
    bad = tmp_path / "vlm_resampler" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import pickle\n"
        "import torch, yaml\n"
        "m.load_state_dict(s, strict=False)\n"
        "try:\n    f()\nexcept Exception:\n    pass\n"
        "try:\n    f()\nexcept:\n    raise\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "yaml.load(t)\n"
        "yaml.load(t, Loader=yaml.Loader)\n"
        "pickle.loads(b)\n"
        "m.load_state_dict(s, False)\n"
        "safetensors.torch.load_model(m, p, False)\n"
        "from torch import load\n"
        "for p in ps:\n    try:\n        f(p)\n    except OSError:\n        continue\n"
        "try:\n    f()\nexcept ValueError:\n    pass\n"
        "try:\n    f()\nexcept Exception:  # noqa: BLE001  (a reason no longer opts out)\n    log()\n"
        # allowed:
        "torch.load(p, weights_only=True)\n"
        "yaml.load(t, Loader=yaml.SafeLoader)\n"
        "try:\n    f()\nexcept Exception as err:\n    raise ValueError('x') from err\n"
        "try:\n    f()\nexcept Exception as err:\n    notes.append(str(err))\n"
        "for p in ps:\n    try:\n        f(p)\n    except OSError as err:\n        problems.append(err)\n        continue\n"
        "m.load_state_dict(s, True)\n"
        "from torch import nn\n"
    )
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    found = forbidden_patterns(bad)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted(
        [
            "imports pickle",
            "strict=False",
            "broad `except` that neither re-raises, exits nor uses the error",
            "bare `except:`",
            "torch.load without weights_only=True",
            "torch.load without weights_only=True",
            "yaml.load without a safe loader",
            "yaml.load without a safe loader",
            "pickle.loads",
            "strict=False (by position)",
            "strict=False (by position)",
            "from torch import load (an unchecked torch.load)",
            "`except` that passes over the error (`pass`/`continue`) without using it",
            "`except` that passes over the error (`pass`/`continue`) without using it",
            "broad `except` that neither re-raises, exits nor uses the error",
        ]
    ), found


# ---- 5. untrusted run directories ---------------------------------------------------------
MALICIOUS = {
    "os.system": lambda s: {"_target_": "os.system", "command": f"touch {s}"},
    "builtins.eval": lambda s: {"_target_": "builtins.eval", "_args_": [f"open({str(s)!r}, 'w')"]},
    "subprocess.Popen": lambda s: {"_target_": "subprocess.Popen", "args": ["touch", str(s)]},
    "nested in a kwarg": lambda s: {
        "_target_": "vlm_resampler.resamplers.mlp.MLPResampler",
        "hidden_dim": {"deep": [{"deeper": {"_target_": "os.system", "command": f"touch {s}"}}]},
    },
    "_args_": lambda s: {"_target_": "subprocess.call", "_args_": [["touch", str(s)]]},
    "allowed prefix leading elsewhere": lambda s: {
        "_target_": "vlm_resampler.models.backbones.os.system",
        "_args_": [f"touch {s}"],
    },
    "torch.nn prefix leading elsewhere": lambda s: {
        "_target_": "torch.nn.modules.module.torch.load",
        "_args_": [str(s)],
    },
}


@pytest.mark.parametrize("where", [layout.METADATA, layout.RESOLVED_CONFIG])
@pytest.mark.parametrize("name", list(MALICIOUS))
def test_a_malicious_run_dir_is_refused_without_calling_it(saved_stage, tmp_path, name, where):
    from vlm_resampler import load_from_run
    from vlm_resampler.runs.targets import UntrustedTarget

    run = copy_run(saved_stage, tmp_path)
    sentinel = tmp_path / "pwned"
    node = MALICIOUS[name](sentinel)
    if where == layout.METADATA:
        path = run / "finetune" / layout.METADATA
        meta = json.loads(path.read_text())
        meta["model"]["resampler"] = node
        path.write_text(json.dumps(meta))
        loader = lambda: load_from_run(run / "finetune")  # noqa: E731
    else:
        # Without metadata, the model tree comes from the run's resolved_config.yaml.
        (run / "finetune" / layout.METADATA).unlink()
        (run / layout.STATUS).write_text(json.dumps({"status": "done", "completed": ["finetune"]}))
        path = run / layout.RESOLVED_CONFIG
        cfg = yaml.safe_load(path.read_text())
        cfg["model"]["resampler"] = node
        path.write_text(yaml.safe_dump(cfg))
        loader = lambda: load_from_run(run)  # noqa: E731
    # From resolved_config.yaml the saved target is first compared with the weights' resampler
    # type (reconstruct.py); either refusal comes before anything is instantiated.
    with pytest.raises(
        (UntrustedTarget, CheckpointMismatch), match="not allowed|cannot be located|but the weights are"
    ):
        loader()
    assert not sentinel.exists()


def test_a_yaml_tag_that_would_run_code_is_not_executed(saved_stage, tmp_path):
    from vlm_resampler import load_from_run

    run = copy_run(saved_stage, tmp_path)
    sentinel = tmp_path / "pwned"
    (run / "finetune" / layout.METADATA).unlink()
    (run / layout.STATUS).write_text(json.dumps({"status": "done", "completed": ["finetune"]}))
    text = (run / layout.RESOLVED_CONFIG).read_text()
    (run / layout.RESOLVED_CONFIG).write_text(f"evil: !!python/object/apply:os.system ['touch {sentinel}']\n" + text)
    with pytest.raises(Exception):  # noqa: B017  (any refusal; what matters is that nothing ran)
        load_from_run(run)
    assert not sentinel.exists()


def conf_model_targets() -> set[str]:
    """Every `_target_` of conf/ outside Hydra's own settings (conf/hydra/, `hydra:` keys)."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            found.update(v for k, v in node.items() if k == "_target_")
            for k, v in node.items():
                if k != "hydra":
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in (REPO / "conf").rglob("*.yaml"):
        if "hydra" not in path.relative_to(REPO / "conf").parts:
            walk(yaml.safe_load(path.read_text()))
    return found


def test_the_target_registry_names_exactly_what_the_model_trees_of_conf_use():
    from vlm_resampler.runs.targets import ALLOWED_TARGETS

    assert ALLOWED_TARGETS == conf_model_targets()


def test_a_new_resampler_or_view_strategy_is_allowed_by_being_defined_on_its_base(tmp_path):
    """No registry line to add: the classes are found in the source, and a view strategy under the
    name panorama/views.py exports it by."""
    from vlm_resampler.runs.targets import resampler_classes, view_classes

    (tmp_path / "fifth.py").write_text("class Gated(Resampler):\n    pass\n\nclass Helper:\n    pass\n")
    assert resampler_classes(tmp_path) == {"vlm_resampler.resamplers.fifth.Gated"}
    (tmp_path / "fisheye.py").write_text("class FisheyeViews(ViewStrategy):\n    pass\n")
    (tmp_path / "hidden.py").write_text("class HiddenViews(ViewStrategy):\n    pass\n")
    (tmp_path / "views.py").write_text(
        "from vlm_resampler.panorama.fisheye import FisheyeViews\nfrom vlm_resampler.panorama.fifth import Helper\n"
    )
    assert view_classes(tmp_path) == {"vlm_resampler.panorama.views.FisheyeViews"}, "only what views.py exports"


def public_callables() -> set[str]:
    """Every public class and function of the package, by the names it is reachable under, and of
    os, subprocess, shutil and builtins."""
    import builtins
    import importlib
    import os
    import pkgutil
    import subprocess

    import vlm_resampler

    names = set()
    modules = [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(vlm_resampler.__path__, "vlm_resampler.")
        if "mamba_cuda" not in m.name
    ]
    for module in [vlm_resampler, *modules, os, subprocess, shutil, builtins]:
        names.update(
            f"{module.__name__}.{n}" for n, obj in vars(module).items() if not n.startswith("_") and callable(obj)
        )
    return names


def test_every_other_public_callable_is_refused_without_being_called(monkeypatch):
    from vlm_resampler.runs.targets import ALLOWED_TARGETS, UntrustedTarget, check_targets

    candidates = public_callables()
    assert len(candidates) > 500 and ALLOWED_TARGETS < candidates
    # Deciding imports nothing and calls nothing: with the import system unusable it still decides.
    monkeypatch.setattr("builtins.__import__", lambda *a, **k: pytest.fail(f"imported {a[0]} while deciding"))
    refused = 0
    for name in sorted(candidates - ALLOWED_TARGETS):
        with pytest.raises(UntrustedTarget, match="is not allowed"):
            check_targets({"resampler": {"_target_": name}})
        refused += 1
    monkeypatch.undo()
    assert refused == len(candidates) - len(ALLOWED_TARGETS)
    for name in ALLOWED_TARGETS:
        check_targets({"resampler": {"_target_": name}})


# ---- 5. paths from data files --------------------------------------------------------------
def write_csv(folder: Path, url: str) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 4)).save(folder / "ok.png")
    csv_path = folder / "test.csv"
    csv_path.write_text(f"url,query,annotation\nok.png,q,a caption\n{url},q,another\n")
    return csv_path


@pytest.mark.parametrize("url", ["../../etc/passwd", "/etc/passwd", "images/../../outside.png", "link/secret.png"])
def test_a_url_leading_out_of_the_data_root_is_refused_naming_the_row(tmp_path, url):
    from vlm_resampler.data.quic360 import PathOutsideRoot, read_quic360_csv

    root = tmp_path / "data"
    csv_path = write_csv(root, url)
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    for skip in (False, True):  # not a bad row to skip: a refusal
        with pytest.raises(PathOutsideRoot, match=rf"{csv_path} row 2 .*url '{url}' leads out of the image root"):
            read_quic360_csv(csv_path, root, skip_bad_rows=skip)


def test_a_url_outside_the_root_is_read_when_the_setting_allows_it(tmp_path):
    from PIL import Image

    from vlm_resampler.data.quic360 import read_quic360_csv

    Image.new("RGB", (8, 4)).save(tmp_path / "outside.png")
    csv_path = write_csv(tmp_path / "data", "../outside.png")
    items, _ = read_quic360_csv(csv_path, tmp_path / "data", allow_outside_root=True)
    assert [i["image"].resolve() for i in items][-1] == (tmp_path / "outside.png").resolve()


def test_the_quic360_setting_is_validated(tmp_path):
    from vlm_resampler.data.datasets import quic360_split

    csv_path = write_csv(tmp_path, "ok.png")
    data = OmegaConf.load(REPO / "conf" / "data" / "quic360.yaml")
    assert data.allow_paths_outside_root is False
    data.root = str(tmp_path)
    data.splits.test = csv_path.name
    assert len(quic360_split(data, "test", "caption")[0]) == 1
    data.allow_paths_outside_root = "yes"
    with pytest.raises(ValueError, match="data.allow_paths_outside_root='yes': expected true or false"):
        quic360_split(data, "test", "caption")
