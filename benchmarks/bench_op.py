"""Op level: masked temperature attention, providers x shapes x dtypes x (forward | forward+backward)."""


def test_op(op_case, measure):
    measure(op_case)
