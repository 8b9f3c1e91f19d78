"""How a customer feels: a label per message (see types.py), from the model's routing call
when one runs, else from the offline classifier (classifier.py)."""
