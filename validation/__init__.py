"""Checks that return result objects: data validation (Great Expectations), fairness
(fairlearn), explainability (SHAP) and metric gates. A separate policy decides warn
or fail. Imports pipelines only."""
