"""The HTTP front end: twisted.web resources, the SSE writer and the site."""
