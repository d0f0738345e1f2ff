"""What people touch: the full-screen display, the phone web app and the command line."""
