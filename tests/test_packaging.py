"""What the wheel ships and what importing the trainer pulls in."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("training", "model_card", "space")
BUNDLED_WEIGHTS = "training/base_models/tiny-textures-32/unet/diffusion_pytorch_model.safetensors"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_ships_only_the_ddpo_hub_package(tmp_path):
    # Built from a copy: an in-tree build would write build/ and *.egg-info into the checkout, and a stale
    # build/lib (files since deleted) would end up in the wheel.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*_cache", "artifacts"
        ),
    )
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob("ddpo_hub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (dist_info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        outside = [name for name in names if not (name.startswith("ddpo_hub/") or name.startswith(f"{dist_info}/"))]
        assert outside == [], "only ddpo_hub/ and its metadata: no tests/, benchmarks/ or top-level training/"
        assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["ddpo_hub"]
        required = (BUNDLED_WEIGHTS, "training/publish/hub_server/app.py", "model_card/template.md", "space/app.py")
        for path in required:
            assert f"ddpo_hub/{path}" in names, path
        assert not any("/tests/" in name or name.endswith(".pyc") for name in names)
        # The bundled model is the real file, not a Git LFS pointer of a few hundred bytes.
        size = archive.getinfo(f"ddpo_hub/{BUNDLED_WEIGHTS}").file_size
    assert size == (REPO / BUNDLED_WEIGHTS).stat().st_size > 100_000


KEPT_OUT_OF_TRAINING = ("jinja2", "gradio", "ddpo_hub.model_card", "ddpo_hub.training.publish")


@pytest.mark.slow
@pytest.mark.parametrize(
    "hidden, kept_out",
    [
        # The core install: no `lora` extra, so neither peft nor the transformers it depends on.
        (("peft", "transformers"), KEPT_OUT_OF_TRAINING),
        # The dev install: diffusers imports peft and transformers when they are installed, and transformers
        # imports jinja2 (its chat templates), so only the project's own modules and gradio can be checked.
        ((), KEPT_OUT_OF_TRAINING[1:]),
    ],
    ids=["core-install", "dev-install"],
)
def test_importing_the_trainer_leaves_out_publishing_and_the_space(hidden, kept_out):
    """Training needs neither the model card (jinja2), the Space (gradio) nor the Hub publishing code."""
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None  # as if not installed\n"
        "import ddpo_hub.training.ddpo, ddpo_hub.training.nft\n"
        f"print(','.join(name for name in {kept_out!r} if sys.modules.get(name) is not None))\n"
        "print(sys.modules['ddpo_hub.training.ddpo'].train.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded, trainer = result.stdout.splitlines()
    assert loaded == "", f"importing the trainer loaded {loaded}"
    assert trainer == "ddpo_hub.training.ddpo"


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names, relative imports resolved against the
    installed package name (`training/` is `ddpo_hub.training`)."""
    relative = path.relative_to(REPO).with_suffix("")
    package = ["ddpo_hub", *relative.parts[:-1]]
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            modules.add(".".join([*base, *([node.module] if node.module else [])]))
    return modules


def test_no_source_module_imports_the_tests():
    files = [path for package in SOURCE_PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 20 and REPO / "training" / "publish" / "hub_server" / "app.py" in files
    offenders = {
        str(path.relative_to(REPO)): sorted(name for name in _imported_modules(path) if name.split(".")[0] == "tests")
        for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    # The scan does see imports: an algorithm's own first-party imports are found.
    assert "ddpo_hub.training.losses" in _imported_modules(REPO / "training" / "ddpo.py")
