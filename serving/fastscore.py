"""Single-row scoring through LightGBM's ``*SingleRowFast`` C API, identical to ``predict``.

``Booster.predict`` on one row pays for its generality (argument checks, a new
predictor object, array conversions, OpenMP set-up): about 60 µs here for a
200-tree model. LightGBM's C API has a prepared single-row path
(``LGBM_BoosterPredictForMatSingleRowFastInit`` once, then
``LGBM_BoosterPredictForMatSingleRowFast`` per row) that runs the same tree traversal
code on a preallocated buffer. :class:`RowScorer` uses it with the iteration range and
parameters ``Booster.predict`` would use, so scores are bit-for-bit the same
(tests/unit/test_fastscore.py compares them on thousands of rows, NaN included).

A scorer owns one C-side buffer: calls are serialised by a lock (the model server calls
it from its event loop; the lock only matters if someone shares it across threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import lightgbm as lgb
import numpy as np
from lightgbm import basic

_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL
_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64


class RowScorer:
    """Scores single rows of a binary/regression booster with the fast C API."""

    def __init__(self, booster: lgb.Booster, num_iteration: int | None = None) -> None:
        self.booster = booster
        self.n_features = booster.num_feature()
        if num_iteration is None:  # what Booster.predict does with num_iteration=None
            num_iteration = booster.best_iteration
        self.num_iteration = int(num_iteration)
        if booster.num_model_per_iteration() != 1:
            raise ValueError("RowScorer scores single-output models only (binary, regression)")
        self._handle = ctypes.c_void_p()
        basic._safe_call(
            basic._LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_PREDICT_NORMAL),
                ctypes.c_int(0),  # start_iteration
                ctypes.c_int(self.num_iteration),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self.n_features),
                basic._c_str(""),
                ctypes.byref(self._handle),
            )
        )
        self._row = np.zeros(self.n_features, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._row_ptr = ctypes.c_void_p(self._row.ctypes.data)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._out_len = ctypes.c_int64(0)
        self._out_len_ref = ctypes.byref(self._out_len)
        self._call = basic._LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._lock = threading.Lock()

    def score(self, values: np.ndarray | list[float]) -> float:
        """The score of one row (``n_features`` values, NaN for missing)."""
        with self._lock:
            self._row[:] = values
            status = self._call(self._handle, self._row_ptr, self._out_len_ref, self._out_ptr)
            if status != 0:
                raise lgb.basic.LightGBMError(basic._LIB.LGBM_GetLastError().decode("utf-8"))
            return float(self._out[0])

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores of a float64 matrix: the fast path for one row, ``Booster.predict`` else."""
        if matrix.shape[0] == 1:
            return np.array([self.score(matrix[0])], dtype=np.float64)
        return np.asarray(self.booster.predict(matrix), dtype=np.float64)

    def close(self) -> None:
        if self._handle:
            basic._LIB.LGBM_FastConfigFree(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
