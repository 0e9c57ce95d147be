"""Command-line interface: argument parsing only; everything else is `onnxpress.api`.

`optimize MODEL.onnx` runs the default pipeline (-O2) and writes `MODEL.opt.onnx` beside the
input. Shorthand flags (`--prune`, `--lowrank`, `--quantize`, ... added by later passes) are
pipeline fragments registered with `register_shorthand`; `--print-pipeline` shows the full text.

Exit codes: 0 success, 1 a pass or a verification failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "optimize_main", "register_shorthand", "Shorthand"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Shorthand:
    """A flag that appends a pipeline fragment, e.g. `--prune 0.3` -> `prune-channels{ratio=0.3}`."""

    flag: str
    metavar: str
    help: str
    fragment: Callable[[str, argparse.Namespace], str]
    choices: tuple[str, ...] | None = None


_SHORTHANDS: list[Shorthand] = []


def register_shorthand(shorthand: Shorthand) -> Shorthand:
    _SHORTHANDS.append(shorthand)
    return shorthand


def _prune_fragment(value: str, args: argparse.Namespace) -> str:
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio < 1.0:
        from onnxpress.errors import InputError

        raise InputError(f"--prune {value}: expected a fraction in [0, 1), e.g. --prune 0.3")
    # Multiples of 8 keep ONNX Runtime's blocked convolution kernels: unaligned counts (45, 90)
    # measured slower than the unpruned model on MobileNetV2 (docs/BENCHMARKS.md).
    options = f"ratio={value} round-to=8" + (" reconstruct=true" if args.data else "")
    return "prune-channels{" + options + "}"


register_shorthand(Shorthand(
    "--prune", "RATIO",
    "remove this fraction of the prunable channels (L2 importance, uniform per group, kept counts "
    "rounded up to multiples of 8; the next layers are refitted on --data when given): "
    "prune-channels{ratio=RATIO round-to=8}",
    _prune_fragment,
))


def _lowrank_fragment(value: str, args: argparse.Namespace) -> str:
    from onnxpress.errors import InputError
    from onnxpress.passes.lowrank import lowrank_fragment

    try:
        return lowrank_fragment(float(value), bool(args.data))
    except ValueError:
        raise InputError(f"--lowrank {value}: expected a fraction in (0, 1), e.g. --lowrank 0.3") from None


register_shorthand(Shorthand(
    "--lowrank", "RATIO",
    "remove this fraction of the parameters of the layers it decomposes (SVD for MatMul/Gemm, "
    "Tucker-2 for convs, ranks multiples of 8, data-aware with --data; layers where it does not pay "
    "are left alone): lowrank-svd{rank-ratio=1-RATIO},lowrank-tucker{rank-ratio=1-RATIO}",
    _lowrank_fragment,
))


def _quantize_fragment(value: str, args: argparse.Namespace) -> str:
    from onnxpress.backends.base import get_backend
    from onnxpress.passes.quantize import quantize_fragment

    target_quantize = getattr(get_backend(args.target), "quantize", None)  # what KIND means on the target
    if target_quantize is not None:
        return target_quantize(value)
    return quantize_fragment(value, bool(args.data))


register_shorthand(Shorthand(
    "--quantize", "KIND",
    "int8: static QDQ int8 that the target fuses (calibrated on --data; without it on random inputs, "
    "with a warning); int4: 4-bit blockwise weights; fp16: float16 with fragile ops kept fp32; "
    "dynamic: int8 weights, activations quantized at run time; int16: 16-bit activations (qnn). "
    "What each means depends on --target (docs/targets.md; --print-pipeline shows it)",
    _quantize_fragment,
    choices=("int8", "int4", "fp16", "dynamic", "int16"),
))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


_DESCRIPTION = """\
Optimize an ONNX model for ONNX Runtime: lossless clean-ups by default (-O2), plus the
compression passes you ask for. The input file is never modified; the result is written
atomically to MODEL.opt.onnx (or -o OUT.onnx) and a summary table is printed.
"""

_EPILOG = """\
pipelines:
  A pipeline is pass names joined by commas, options in braces, nested pipelines in parentheses:
    --pipeline "fold-constants,fixpoint{max-iters=4}(cse,dce),fold-batchnorm"
  -O0 loads and saves, -O1 runs cheap clean-ups, -O2 (default) all lossless clean-ups.
  --list-passes shows every pass with its options; --print-pipeline shows what would run.

examples:
  optimize model.onnx
  optimize model.onnx -o small.onnx --data calib.npz --report report.json
  optimize model.onnx --pipeline O1 --verify numeric --input-shape input:1x3x224x224
  optimize model.onnx --target tensorrt --quantize int8 --data calib.npz --print-pipeline
  optimize --replay model.opt.onnx retrained.onnx -o retrained.opt.onnx

exit codes: 0 ok, 1 a pass or a verification failed, 2 bad input or usage
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser(prog: str = "optimize") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="the input .onnx model (never modified)")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output path (default: MODEL.opt.onnx beside the input)")
    level = p.add_mutually_exclusive_group()
    for n, what in ((0, "load and save only"), (1, "cheap lossless clean-ups"), (2, "all lossless clean-ups (default)")):
        level.add_argument(f"-O{n}", dest="level", action="store_const", const=n, help=what)
    level.add_argument("--pipeline", metavar="TEXT", help="pipeline text to run instead of an -O level")
    p.add_argument("--target", metavar="EP",
                   help="ONNX Runtime execution provider to optimize for: cpu (default), cuda, tensorrt, openvino, "
                        "qnn, dml, coreml, or a plugin's")
    p.add_argument("--replay", metavar="OUT.onnx",
                   help="re-run the pipeline and target recorded in OUT.onnx (by an earlier optimize) on MODEL")
    p.add_argument("--placement", choices=("auto", "on", "off"), default="auto",
                   help="after optimizing, run once on the target's EP (where installed) and report which "
                        "provider ran each node (auto: models up to 1 GiB of weights)")
    p.add_argument("--data", metavar="PATH", help="input data: .npz, a folder of .npy/.pb files, or pkg.module:function")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS",
                   help="fix symbolic input dims, e.g. input:1x3x224x224 (repeatable)")
    p.add_argument("--verify", choices=("none", "structure", "numeric"),
                   help="check after every pass: structure, or also outputs on ORT (default: numeric with --data, else structure)")
    p.add_argument("--report", metavar="OUT.json", help="write the summary as JSON")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="intra-op threads the optimized model will run with: passes that time the model "
                        "(quantization's speed checks) time at N (default: ONNX Runtime's default, all cores)")
    for s in _SHORTHANDS:
        p.add_argument(s.flag, metavar=s.metavar, help=s.help, choices=s.choices)
    info = p.add_argument_group("information")
    info.add_argument("--list-passes", action="store_true", help="list passes and named pipelines, then exit")
    info.add_argument("--print-pipeline", action="store_true", help="print the full pipeline text, then exit")
    debug = p.add_argument_group("debugging")
    debug.add_argument("--time-passes", action="store_true", help="list every pass execution with its time (the summary aggregates by pass)")
    debug.add_argument("--print-ir-after-change", action="store_true", help="print the IR after every pass that changed it")
    debug.add_argument("--dump-dir", metavar="DIR", help="save the model after every pass that changed it")
    debug.add_argument("--reproducer", metavar="DIR", help="on a failure, write the model before the failing pass and a one-pass pipeline")
    debug.add_argument("--bisect-limit", type=int, metavar="N", help="run only the first N pass executions")
    debug.add_argument("--load-plugin", action="append", default=[], metavar="MODULE", help="import MODULE to register its passes (repeatable)")
    debug.add_argument("--external-data", action="store_true", help="store weights in OUT.onnx.data (automatic above 2 GB)")
    debug.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    debug.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    debug.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def _pipeline_text(args: argparse.Namespace) -> str:
    from onnxpress.api import resolve_pipeline

    fragments = []
    for s in _SHORTHANDS:
        value = getattr(args, s.flag.lstrip("-").replace("-", "_"))
        if value is not None:
            fragments.append(s.fragment(value, args))
    return resolve_pipeline(args.pipeline, level=args.level, target=args.target, fragments=fragments)


def _replay_recipe(args: argparse.Namespace) -> Any:
    """The recipe `--replay OUT.onnx` names, after refusing flags that would contradict it."""
    if not args.replay:
        return None
    from onnxpress.backends.recipe import read_recipe

    clashing = [flag for flag, given in (
        ("--pipeline", args.pipeline is not None), ("-O", args.level is not None),
        ("--target", args.target is not None),
        *((s.flag, getattr(args, s.flag.lstrip("-").replace("-", "_")) is not None) for s in _SHORTHANDS),
    ) if given]
    if clashing:
        raise _usage(f"--replay takes the pipeline and target from {args.replay}; drop {', '.join(clashing)}")
    return read_recipe(args.replay)


def _default_output(model: str) -> str:
    root, ext = os.path.splitext(model)
    return f"{root}.opt{ext or '.onnx'}"


def _print_passes(console: Any) -> None:
    from rich.table import Table

    from onnxpress.passes.registry import list_entries

    table = Table(title="passes and pipelines", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("options (default)")
    table.add_column("description")
    for e in list_entries():
        opts = " ".join(f"{k}={d}" for k, _t, d in e.options)
        table.add_row(e.name, e.kind, opts, e.description)
    console.print(table)


def _run(args: argparse.Namespace, console: Any, err: Any) -> int:
    from onnxpress import api
    from onnxpress.passes.registry import expand_pipeline_text, load_plugin

    for module in args.load_plugin:
        load_plugin(module)
    if args.list_passes:
        _print_passes(console)
        return EXIT_OK
    recipe = _replay_recipe(args)
    args.target = args.target or "cpu"
    text = recipe.pipeline if recipe is not None else _pipeline_text(args)
    if args.print_pipeline:
        console.print(expand_pipeline_text(text), markup=False, highlight=False, soft_wrap=True)
        return EXIT_OK
    if not args.model:
        raise _usage("the model argument is required")
    if not os.path.exists(args.model):
        from onnxpress.errors import InputError

        raise InputError(f"no such file: {args.model}")
    output = args.output or _default_output(args.model)
    shapes = {}
    from onnxpress.ir.shapes import parse_input_shape

    for spec in args.input_shape:
        name, dims = parse_input_shape(spec)
        shapes[name] = dims
    extra = []
    if not args.quiet:
        extra.append(_progress_instrument(err))
    data = args.data
    if data is None and getattr(args, "quantize", None) in ("int8", "int16"):
        data = api.RANDOM_DATA  # static int8 needs calibration: random, and the report says so
    if data is None and recipe is not None and recipe.data == api.RANDOM_DATA:
        data = api.RANDOM_DATA  # replayed as it was made
    if recipe is not None and not shapes and recipe.input_shapes:
        shapes = {k: list(v) for k, v in recipe.input_shapes.items()}
    result = api.optimize(
        args.model,
        text,
        data=data,
        verify=args.verify or "auto",
        target=recipe.target if recipe is not None else args.target,
        input_shapes=shapes or None,
        placement=args.placement,
        output=output,
        external_data=True if args.external_data else None,
        dump_dir=args.dump_dir,
        reproducer_dir=args.reproducer,
        bisect_limit=args.bisect_limit,
        print_ir=(lambda s: console.print(s, markup=False, highlight=False)) if args.print_ir_after_change else None,
        instruments=[i for i in extra if i is not None],
        config={"timing_threads": args.threads} if args.threads else None,
    )
    report = result.report
    if args.report:
        report.to_json(args.report)
    if not args.quiet:
        report.render(console, show_timing=True, per_execution=args.time_passes)
    return EXIT_OK


def _progress_instrument(err: Any):
    """A live line on stderr naming the running pass (only on a terminal)."""
    if not err.is_terminal:
        return None
    from rich.status import Status

    from onnxpress.passes.manager import PassInstrument, pass_name

    class _Progress(PassInstrument):
        def __init__(self) -> None:
            self.status = Status("", console=err)
            self.count = 0

        def before_pipeline(self, model, passes):
            self.status.start()

        def before_pass(self, pass_, model):
            self.count += 1
            self.status.update(f"pass {self.count}: {pass_name(pass_)} ({sum(1 for _ in model.graph)} nodes)")

        def after_pass_failed(self, pass_, before, error):
            self.status.stop()

        def after_pipeline(self, model):
            self.status.stop()

    return _Progress()


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main_with_args(argv: Sequence[str] | None, prog: str = "optimize") -> int:
    from rich.console import Console

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if not args.quiet else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    console = Console(highlight=False, width=max(100, Console().width))
    err = Console(stderr=True, highlight=False)
    from onnxpress.errors import OnnxpressError

    try:
        return _run(args, console, err)
    except _UsageError as e:
        err.print(f"{prog}: error: {e} (see --help)", markup=False)
        return EXIT_USAGE
    except OnnxpressError as e:
        err.print(f"{prog}: error: {e}", markup=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print(f"{prog}: interrupted; nothing was written", markup=False)
        return 130
    except Exception as e:  # a bug in onnxpress: still one line unless --debug
        if args.debug:
            raise
        err.print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  markup=False, soft_wrap=True)
        return EXIT_FAILED


def optimize_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `optimize` console script."""
    return main_with_args(argv, "optimize")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `onnxpress`: `onnxpress optimize ...`, `onnxpress list-passes`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "optimize":
        return main_with_args(argv[1:], "onnxpress optimize")
    if argv and argv[0] == "list-passes":
        return main_with_args(["--list-passes", *argv[1:]], "onnxpress")
    if argv and argv[0] in ("-h", "--help") or not argv:
        sys.stdout.write("usage: onnxpress optimize MODEL.onnx [options]   (same as `optimize`)\n"
                         "       onnxpress list-passes\n")
        return EXIT_OK if argv else EXIT_USAGE
    return main_with_args(argv, "onnxpress")


if __name__ == "__main__":  # python -m onnxpress.cli
    sys.exit(main())
