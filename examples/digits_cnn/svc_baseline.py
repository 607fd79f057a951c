"""The reference point for the example: scikit-learn's SVC, tuned by 5-fold cross-validation on the 1,437 samples
trainlib trains and validates on, scored once on the same 360 held-out digits (split off as trainlib does).

    .venv/bin/python examples/digits_cnn/svc_baseline.py
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import SVC

from trainlib.data import TEST_FRACTION, TEST_SPLIT_SEED

digits = load_digits()
x_rest, x_test, y_rest, y_test = train_test_split(
    digits.data / 16, digits.target, test_size=TEST_FRACTION, stratify=digits.target, random_state=TEST_SPLIT_SEED
)
grid = {"C": [0.3, 1, 3, 10, 30, 100], "gamma": ["scale", 0.01, 0.03, 0.1, 0.3]}
search = GridSearchCV(SVC(kernel="rbf"), grid, cv=5, n_jobs=1).fit(x_rest, y_rest)
accuracy = search.score(x_test, y_test)
print(f"tuned SVC {search.best_params_}: cross-validation {search.best_score_:.4f}, held-out test {accuracy:.4f}")
print(f"({round(accuracy * len(y_test))} of {len(y_test)} test digits right)")
