"""privfed as a Flower App (``flwr run examples/flower_app``)."""
