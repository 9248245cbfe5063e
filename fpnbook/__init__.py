"""fpnbook: the library behind the book. FPN, focal loss, RoIAlign, weight transfer."""

__version__ = "0.1.0"
