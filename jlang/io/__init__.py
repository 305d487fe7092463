"""File formats jlang reads and writes without the libraries that defined them (e.g. `torch.save` files)."""
