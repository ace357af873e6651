"""The numbers the CosReg paper publishes (Suteu & Guo, Tables 1-3), for side-by-side reports.

Table 1 is the harmonic mean of the two task accuracies (%) on the modified MultiDigitMNIST test set with
the standard deviation of the task-gradient cosines; Tables 2-3 are task errors (lower is better). Rows the
paper's text leaves garbled are recorded as read in REFERENCE.md (Table 1's single-task row reads 93.7;
Table 3's single-task row is unreadable and left out).
"""

from __future__ import annotations

# method key -> {"accuracy": %, "accuracy_std": %, "sigma": cosine std}
TABLE1_MULTIDIGIT = {
    "single_task": {"label": "Single task", "accuracy": 93.7, "accuracy_std": None, "sigma": None},
    "equal": {"label": "No reg", "accuracy": 90.7, "accuracy_std": 0.01, "sigma": 0.27},
    "dropout": {"label": "Dropout", "accuracy": 91.0, "accuracy_std": 0.00, "sigma": 0.11},
    "batchnorm": {"label": "Batchnorm", "accuracy": 91.3, "accuracy_std": 0.02, "sigma": 0.11},
    "cosreg": {"label": "CosReg (alpha=10)", "accuracy": 90.7, "accuracy_std": 0.00, "sigma": 0.03},
    "cosreg_bn": {"label": "CosReg (alpha=0.1) + Batchnorm", "accuracy": 92.5, "accuracy_std": 0.01, "sigma": 0.09},
}

# method key -> (1 - mIoU, depth RMSE, normal 1 - |cos|)
TABLE2_NYUV2 = {
    "single_task": (0.663, 0.775, 0.051),
    "equal": (0.670, 0.765, 0.053),
    "gradnorm": (0.651, 0.747, 0.052),
    "uncertainty": (0.659, 0.745, 0.052),
    "cosreg": (0.646, 0.747, 0.053),
}
TABLE2_COLUMNS = ("seg 1-mIoU", "depth RMSE", "normal 1-|cos|")

# method key -> (1 - mIoU13, 1 - mIoU37, depth RMSE)
TABLE3_SUNRGBD = {
    "equal": (0.646, 0.717, 0.586),
    "gradnorm": (0.648, 0.723, 0.606),
    "uncertainty": (0.646, 0.716, 0.582),
    "cosreg": (0.644, 0.714, 0.584),
}
TABLE3_COLUMNS = ("seg13 1-mIoU", "seg37 1-mIoU", "depth RMSE")
