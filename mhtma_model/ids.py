"""P-IDS and U-IDS (Zhao et al. 2021, CoModGAN; reported by MAT): how often a linear classifier cannot tell
inpainted images from real ones, on the Inception-v3 pool features that FID uses (:mod:`mhtma_model.fid`).

Given N real images and their N inpainted versions (pairs ``i``), a linear SVM (scikit-learn's
``LinearSVC(dual=False)``, default regularisation C = 1, no feature scaling, as CoModGAN's metric) is
fitted on all 2N feature vectors with label 1 = real, 0 = inpainted, and evaluated on the same vectors:

* **U-IDS** (unpaired) = the SVM's misclassification rate on its own training set, 1 − accuracy.
  Indistinguishable sets give about 0.5, perfectly separable sets 0.
* **P-IDS** (paired) = the fraction of pairs in which the inpainted image's decision value is higher
  (more "real") than its own real image's: ``mean(d(fake_i) > d(real_i))``. Strict ">": an inpainted
  image identical to its real one does not count, so identical sets give 0, like separable ones.

Both are reported as fractions in [0, 1] (papers print them × 100 %).

Small samples: with fewer images than the 2048 feature dimensions a linear SVM separates almost any two
sets, so U-IDS and P-IDS of small sets are biased towards 0 and noisy (CoModGAN and MAT use 10k+
images). They are computed only for sets of at least :data:`IDS_MIN_IMAGES` pairs (overall and per
bucket); compare them between methods only on the same images and masks.

scikit-learn is the optional extra ``mhtma[eval]`` (``pip install scikit-learn``); without it
:func:`require_sklearn` raises ImportError saying so.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

IDS_MIN_IMAGES = 10
SKLEARN_MISSING = "P-IDS/U-IDS need scikit-learn, which is not installed: pip install scikit-learn " \
                  "(or pip install 'mhtma[eval]')"


def require_sklearn():
    """Import and return ``sklearn.svm``, or raise ImportError with the install command."""
    try:
        import sklearn.svm
    except ImportError as exc:
        raise ImportError(SKLEARN_MISSING) from exc
    return sklearn.svm


def sklearn_available() -> bool:
    try:
        require_sklearn()
    except ImportError:
        return False
    return True


def inception_discriminative_scores(real, fake) -> dict[str, float]:
    """``real [N, D]``, ``fake [N, D]`` features (row ``i`` of each = pair ``i``) -> ``{"p_ids", "u_ids"}``.

    See the module docstring; N ≥ 1 (the SVM needs one vector of each class); any N is computed here,
    the :data:`IDS_MIN_IMAGES` floor is the caller's (:func:`ids_or_none`).
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or real.shape != fake.shape or real.shape[0] < 1:
        raise ValueError(f"real and fake features must be [N, D] of the same shape with N ≥ 1, got "
                         f"{list(real.shape)} and {list(fake.shape)}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError("features contain NaN or inf")
    svm_module = require_sklearn()
    inputs = np.concatenate([real, fake])
    labels = np.concatenate([np.ones(len(real), np.int64), np.zeros(len(fake), np.int64)])
    svm = svm_module.LinearSVC(dual=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on degenerate (e.g. identical) sets
        svm.fit(inputs, labels)
    u_ids = 1.0 - float(svm.score(inputs, labels))
    p_ids = float(np.mean(svm.decision_function(fake) > svm.decision_function(real)))
    return {"p_ids": p_ids, "u_ids": u_ids}


def ids_or_none(real, fake, min_images: int = IDS_MIN_IMAGES) -> Optional[dict[str, float]]:
    """:func:`inception_discriminative_scores` for at least ``min_images`` pairs, else None."""
    if len(real) < min_images:
        return None
    return inception_discriminative_scores(real, fake)


__all__ = ["IDS_MIN_IMAGES", "SKLEARN_MISSING", "require_sklearn", "sklearn_available",
           "inception_discriminative_scores", "ids_or_none"]
