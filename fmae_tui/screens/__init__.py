"""The app's screens, one class a file."""
