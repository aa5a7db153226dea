"""Layer level: MaskedTemperatureAttention vs ATMA vs ContextualAttention (for-loop baseline) over batch."""


def test_layer(layer_case, measure):
    measure(layer_case)
