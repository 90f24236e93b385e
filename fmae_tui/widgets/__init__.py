"""The app's building blocks, one class a file: widgets, and the small readers they are fed by."""
