"""Model level: generator inference (images/s) per attention variant, and one G + D training step."""


def test_model(model_case, measure):
    measure(model_case)
