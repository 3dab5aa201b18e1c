"""Compiled batch scoring: the LightGBM model as native code, bit-for-bit ``Booster.predict``.

``Booster.predict`` walks 300 trees per row through LightGBM's generic node arrays
(about 13 µs a row here, single-threaded). lleaves (LLVM via llvmlite) turns every
tree into straight-line machine code, several times faster on batches. Out of the
box its sums are not LightGBM's: it adds trees in cache blocks of 34 and then adds
each block's partial sum to the running total, a different rounding order, so most
scores differ in the last bits (measured: ~90% of rows, up to 1.4e-15). This module
patches lleaves' block code generator (``_populate_instruction_block``) to continue
the running sum across blocks, ``((0 + t0) + t1) + ...``, which is LightGBM's order;
the sigmoid is the same ``1 / (1 + exp(-x))`` through libm's ``exp``. With that, scores
are identical, NaN, unseen and negative category codes included.

Nothing is trusted on faith: every compiled model is checked at build time against
``Booster.predict`` on a few thousand generated rows (values at and next to every split
threshold of the model, NaN, zeros, infinities, known, unseen, negative, fractional and
out-of-range category codes); any difference and the compiled model is not used (a
warning says how many rows differ and by how much). Two input rules of LightGBM are
applied before scoring: its dense-matrix reader treats values within +-1e-35 (float
``kZeroThreshold``) as 0 (they sit on LightGBM's own +-1e-35 split thresholds, so this
changes decisions; the verification rows found it), and category codes outside the 32-bit
range become -1 (both go right in LightGBM; no input relies on LLVM's undefined
float-to-int conversion).

Compilation takes tens of seconds for 300 trees, so it never runs on the request path:
:class:`BackgroundCompiler` builds in a background thread that runs the LLVM compiler
in a child process (niced, outside the server's GIL), loads the object file, verifies
it and only then offers it; until then callers use ``Booster.predict``. The object file
is cached on disk under ``$GOVML_COMPILED_CACHE`` (default ``<tmp>/govml-compiled``),
keyed by the SHA-256 of the model text, lleaves/llvmlite/LLVM versions, this module's
code generator version and the host CPU (the code is compiled for it); a restart with
the same model loads it in well under a second, and ``python -m serving.compiled warm
MODEL_FILE`` fills it ahead (at deploy time). ``GOVML_COMPILED=0`` turns it off.

Measured (300-tree fraud model, 17 features, 10,000 rows, one thread, same process):
``Booster.predict`` 156 ms, this 24 ms; compile 12-15 s, cached load + verification 0.1 s.
treelite 4.8 + tl2cgen 1.0 (gcc -O3) was slower (143 ms; 69 ms with ``quantize``) and
not identical on edge inputs (category code -0.5, values at a 1.8e308 threshold).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENV_CACHE = "GOVML_COMPILED_CACHE"
ENV_SWITCH = "GOVML_COMPILED"
CODEGEN_VERSION = "seq-sum-1"  # bump when the patched code generator changes
FBLOCKSIZE = 34  # lleaves' default cache block of trees
VERIFY_ROWS = 4096
BUILD_TIMEOUT_S = 900.0
_INT32 = float(2**31)
_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float): |x| <= it reads as 0


class CompileError(RuntimeError):
    """The compiled model cannot be built, loaded or does not match ``Booster.predict``."""


def cache_dir() -> Path:
    configured = os.environ.get(ENV_CACHE)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "govml-compiled"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------- lleaves
def _patch_lleaves() -> None:
    """Make lleaves sum trees in LightGBM's order across cache blocks (see the module doc).

    Long because: the inner function is lleaves 1.3.0's ``_populate_instruction_block``
    copied line for line except the block marked CHANGED, so that it can be diffed
    against upstream when lleaves is upgraded.
    """
    from lleaves.compiler.codegen import codegen as cg
    from llvmlite import ir

    if getattr(cg, "_govml_sequential_sum", False):
        return

    def populate_instruction_block(
        instr_block_idx, forest, root_func, tree_funcs, setup_block, next_block,
        eval_obj_func, use_fp64,
    ):  # fmt: skip
        # lleaves 1.3.0's _populate_instruction_block, except where marked
        data_arr, out_arr, start_index, end_index = root_func.args
        builder = ir.IRBuilder(setup_block)
        start_index = builder.zext(start_index, cg.LONG)
        end_index = builder.zext(end_index, cg.LONG)
        loop_iter = builder.alloca(cg.LONG, 1, "loop-idx")
        builder.store(start_index, loop_iter)
        condition_block = root_func.append_basic_block("loop-condition")
        builder.branch(condition_block)

        builder = ir.IRBuilder(condition_block)
        comp = builder.icmp_signed("<", builder.load(loop_iter), end_index)
        core_block = root_func.append_basic_block("loop-core")
        builder.cbranch(comp, core_block, next_block)

        builder = ir.IRBuilder(core_block)
        args = []
        loop_iter_reg = builder.load(loop_iter)
        iter_mul_nargs = builder.mul(loop_iter_reg, ir.Constant(cg.LONG, forest.n_args))
        idx = (builder.add(iter_mul_nargs, cg.lconst(i)) for i in range(forest.n_args))
        raw_ptrs = [builder.gep(data_arr, (c,)) for c in idx]
        for feature, ptr in zip(forest.features, raw_ptrs, strict=True):
            el = builder.load(ptr)
            if feature.is_categorical:  # NaN: the smallest int (always right)
                is_nan = builder.fcmp_ordered("uno", el, cg.get_fdtype_const(0.0, use_fp64))
                el = builder.select(is_nan, cg.iconst(-(2**31)), builder.fptosi(el, cg.INT_CAT))
            args.append(el)
        res_idx = builder.mul(cg.lconst(forest.n_classes), loop_iter_reg)
        results_ptr = [
            builder.gep(out_arr, (builder.add(res_idx, cg.lconst(k)),))
            for k in range(forest.n_classes)
        ]
        # CHANGED: a later block continues the running sum stored by the previous one
        # (LightGBM: ((0 + t0) + t1) + ...) instead of adding its own partial sum to it
        if instr_block_idx > 0:
            results = [builder.load(ptr) for ptr in results_ptr]
        else:
            results = [cg.get_fdtype_const(0.0, use_fp64) for _ in range(forest.n_classes)]
        for func in tree_funcs:
            tree_res = builder.call(func.llvm_function, args)
            results[func.class_id] = builder.fadd(results[func.class_id], tree_res)
        # END CHANGED
        if eval_obj_func:
            results = cg._populate_objective_func_block(
                builder, results, forest.objective_func, forest.objective_func_config,
                forest.raw_score, forest.average_output, len(forest.trees), use_fp64,
            )  # fmt: skip
        for result, result_ptr in zip(results, results_ptr, strict=True):
            builder.store(result, result_ptr)
        builder.store(builder.add(loop_iter_reg, cg.lconst(1)), loop_iter)
        builder.branch(condition_block)

    cg._populate_instruction_block = populate_instruction_block
    cg._govml_sequential_sum = True


def _toolchain() -> str:
    """Everything besides the model text that decides the machine code."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return "|".join(
        [
            f"lleaves {version('lleaves')}",
            f"llvmlite {version('llvmlite')}",
            "llvm {}.{}.{}".format(*llvm.llvm_version_info),
            f"codegen {CODEGEN_VERSION}",
            f"fblocksize {FBLOCKSIZE}",
            llvm.get_process_triple(),
            llvm.get_host_cpu_name(),
            features,
        ]
    )


def cache_key(model_text: str) -> str:
    digest = hashlib.sha256(model_text.encode())
    digest.update(b"\0" + _toolchain().encode())
    return digest.hexdigest()


def _partial(object_file: Path, pid: int) -> Path:
    return object_file.with_name(f"{object_file.name}.{pid}.partial")


def _compile_object(model_file: Path, object_file: Path) -> None:
    """In the child process: compile ``model_file`` (lleaves, patched), then move the object
    file into place atomically (done even if the server that asked has gone meanwhile)."""
    import lleaves

    _patch_lleaves()
    partial = _partial(object_file, os.getpid())
    partial.unlink(missing_ok=True)
    lleaves.Model(model_file=str(model_file)).compile(cache=str(partial), fblocksize=FBLOCKSIZE)
    os.replace(partial, object_file)


def _build_object(model_file: Path, object_file: Path, timeout: float, started: Any = None) -> None:
    """Compile in a niced child process (``python -m serving.compiled compile``)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "serving.compiled", "compile", str(model_file), str(object_file)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if started is not None:
        started(proc)
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CompileError(f"the compiler did not finish within {timeout:.0f} s") from None
    finally:
        _partial(object_file, proc.pid).unlink(missing_ok=True)  # killed or failed half-way
    if proc.returncode != 0 or not object_file.exists():
        tail = (output or "").strip().splitlines()[-1:] or ["no output"]
        raise CompileError(f"the compiler failed (exit {proc.returncode}): {tail[0]}")


# ----------------------------------------------------------------------------- model
def _model_facts(model_text: str) -> tuple[list[int], dict[int, list[float]], dict[int, Any]]:
    """Categorical feature indices, numerical split thresholds and feature value infos."""
    infos_line = re.search(r"^feature_infos=(.*)$", model_text, re.M)
    infos = infos_line.group(1).split() if infos_line else []
    ranges: dict[int, Any] = {}
    categorical = []
    for j, info in enumerate(infos):
        if info.startswith("["):
            lo, hi = (float(v) for v in info[1:-1].split(":"))
            ranges[j] = (lo, hi)
        elif info != "none":
            categorical.append(j)
            ranges[j] = sorted({int(v) for v in info.split(":")})
    thresholds: dict[int, list[float]] = {}
    for block in model_text.split("\nend of trees")[0].split("\nTree=")[1:]:
        fields = dict(
            line.split("=", 1) for line in block.splitlines()[1:] if "=" in line and line[0] != "["
        )
        if "split_feature" not in fields:
            continue
        for f, t, d in zip(
            fields["split_feature"].split(),
            fields["threshold"].split(),
            fields["decision_type"].split(),
            strict=False,
        ):
            if not int(d) & 1:  # numerical split
                thresholds.setdefault(int(f), []).append(float(t))
    return categorical, thresholds, ranges


def verification_rows(model_text: str, n_features: int, rows: int = VERIFY_ROWS) -> np.ndarray:
    """Rows that exercise every split: thresholds and their neighbours, NaN, odd codes."""
    rng = np.random.default_rng(20240611)
    categorical, thresholds, ranges = _model_facts(model_text)
    out = np.empty((rows, n_features), dtype=np.float64)
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf, 1e300, -1e300])
    for j in range(n_features):
        kind = rng.random(rows)
        if j in categorical:
            known = np.asarray(ranges[j], dtype=np.float64)
            top = max(known.max(initial=0.0), 0.0)
            odd = np.array(
                [-1, -2, -1e6, top + 1, top + 7, 31, 32, 33, 63, 64, 1000, 0.5, 2.5, -0.5,
                 _INT32, -_INT32, -_INT32 - 1, 2**32 + 1, 1e12, -1e12, np.inf, -np.inf],
            )  # fmt: skip
            col = rng.choice(known, rows) if known.size else np.zeros(rows)
            col = np.where(kind < 0.3, rng.choice(odd, rows), col)
        else:
            lo, hi = ranges.get(j, (-1.0, 1.0))
            span = max(hi - lo, 1.0)
            col = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, rows)
            cuts = np.asarray(thresholds.get(j, [lo, hi]), dtype=np.float64)
            at = rng.choice(cuts, rows)
            col = np.where(kind < 0.45, at, col)
            col = np.where(kind < 0.30, np.nextafter(at, np.inf), col)
            col = np.where(kind < 0.20, np.nextafter(at, -np.inf), col)
            col = np.where((kind >= 0.85) & (kind < 0.90), rng.choice(specials, rows), col)
        col[rng.random(rows) < 0.1] = np.nan
        out[:, j] = col
    return out


class CompiledModel:
    """A compiled, verified model: ``predict(matrix)`` gives ``Booster.predict``'s float64."""

    def __init__(self, model: Any, categorical: list[int], source: str) -> None:
        self._model = model
        self.n_features = int(model.num_feature())
        self.categorical = list(categorical)
        self.source = source  # "compiled" or "cache"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.n_features:
            raise ValueError(f"expected a (rows, {self.n_features}) matrix, got {data.shape}")
        with np.errstate(invalid="ignore"):
            tiny = (np.abs(data) <= _ZERO) & (data != 0.0)
        if tiny.any():
            data = np.where(tiny, 0.0, data)
        if self.categorical:
            codes = data[:, self.categorical]
            with np.errstate(invalid="ignore"):
                outside = np.abs(codes) >= _INT32  # NaN stays NaN (goes right either way)
            if outside.any():
                data = data.copy()
                data[:, self.categorical] = np.where(outside, -1.0, codes)
        return self._model.predict(data, n_jobs=1)


def build(
    model_text: str,
    booster: Any,
    *,
    cache: Path | None = None,
    verify_rows: int = VERIFY_ROWS,
    timeout: float = BUILD_TIMEOUT_S,
    started: Any = None,
) -> CompiledModel:
    """Compile (or load from the cache) and verify; :class:`CompileError` says why not."""
    try:
        import lleaves
    except ImportError as exc:
        raise CompileError(f"lleaves is not installed ({exc})") from None
    if booster.num_model_per_iteration() != 1:
        raise CompileError("only single-output models (binary, regression) are compiled")
    folder = cache if cache is not None else cache_dir()
    try:
        key = cache_key(model_text)
        folder.mkdir(parents=True, exist_ok=True)
        model_file, object_file = folder / f"{key}.txt", folder / f"{key}.o"
        if not model_file.exists() or model_file.read_text() != model_text:
            partial = model_file.with_name(f"{model_file.name}.{os.getpid()}")
            partial.write_text(model_text)
            os.replace(partial, model_file)
        source = "cache"
        if not object_file.exists():
            _build_object(model_file, object_file, timeout, started)
            source = "compiled"
        model = lleaves.Model(model_file=str(model_file))
        model.compile(cache=str(object_file), fblocksize=FBLOCKSIZE)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 (any failure: not used, and why)
        raise CompileError(f"{type(exc).__name__}: {exc}") from None
    categorical = _model_facts(model_text)[0]
    compiled = CompiledModel(model, categorical, source)
    if compiled.n_features != booster.num_feature():
        raise CompileError(
            f"{compiled.n_features} features compiled, {booster.num_feature()} in the model"
        )
    rows = verification_rows(model_text, compiled.n_features, verify_rows)
    expected = np.asarray(booster.predict(rows), dtype=np.float64).reshape(-1)
    got = compiled.predict(rows)
    if not np.array_equal(got, expected, equal_nan=True):
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))
        diff = np.abs(got - expected)[~same]
        object_file.unlink(missing_ok=True)  # never reuse it
        raise CompileError(
            f"scores differ from Booster.predict on {int((~same).sum())} of {len(rows)} "
            f"verification rows (max abs difference {float(np.nanmax(diff, initial=0)):.3g})"
        )
    return compiled


class BackgroundCompiler:
    """Builds a :class:`CompiledModel` in a daemon thread; ``scorer`` is None until verified."""

    def __init__(self, booster: Any, *, cache: Path | None = None, name: str = "model") -> None:
        self.scorer: CompiledModel | None = None
        self.status = "building"
        self.seconds: float | None = None
        self._done = threading.Event()
        # the text of the trees Booster.predict uses (best_iteration when set), taken now:
        # the booster is not touched from the thread, except by the final verification
        self._text = booster.model_to_string()
        self._booster = booster
        self._cache = cache
        self._name = name
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"compile-{name}", daemon=True)

    def start(self) -> BackgroundCompiler:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            scorer = build(self._text, self._booster, cache=self._cache, started=self._child)
        except CompileError as exc:
            self.status = f"unavailable: {exc}"
            log.warning("%s: compiled batch scoring unavailable, using Booster.predict: %s",
                        self._name, exc)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (never take the server down)
            self.status = f"unavailable: {type(exc).__name__}: {exc}"
            log.warning("%s: compiled batch scoring failed, using Booster.predict: %s",
                        self._name, self.status)  # fmt: skip
        else:
            self.seconds = time.perf_counter() - started
            self.scorer = scorer
            self.status = "ready"
            log.info("%s: compiled batch scoring ready (%s, %.1f s, verified on %d rows)",
                     self._name, scorer.source, self.seconds, VERIFY_ROWS)  # fmt: skip
        finally:
            self._done.set()

    def _child(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        if self._closed:  # closed while starting it
            proc.kill()

    def close(self) -> None:
        """Stop a running compiler process (the server is stopping); idempotent."""
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the build has finished (either way) within ``timeout``."""
        return self._done.wait(timeout)


def start(booster: Any, *, name: str = "model") -> BackgroundCompiler | None:
    """A started :class:`BackgroundCompiler`, or None when ``GOVML_COMPILED=0``."""
    if not enabled():
        log.info("%s: compiled batch scoring off (%s=0)", name, ENV_SWITCH)
        return None
    return BackgroundCompiler(booster, name=name).start()


USAGE = """usage:
  python -m serving.compiled warm MODEL_FILE
      build and verify into the cache ($GOVML_COMPILED_CACHE), e.g. at deploy time,
      so that model servers load it at start
  python -m serving.compiled compile MODEL_TXT OBJECT_FILE
      (the child process of a build)"""


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "compile":
        with contextlib.suppress(OSError):
            os.nice(10)  # behind the requests of the server that started it
        _compile_object(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) == 2 and argv[0] == "warm":
        import lightgbm as lgb

        booster = lgb.Booster(model_file=argv[1])
        started = time.perf_counter()
        try:
            scorer = build(booster.model_to_string(), booster)
        except CompileError as exc:
            print(f"compiled batch scoring unavailable: {exc}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        print(f"compiled batch scoring ready in {cache_dir()} ({scorer.source}, {seconds:.1f} s)")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
