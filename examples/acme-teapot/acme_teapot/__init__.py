"""acme-teapot: an example third-party plugin pack for sixgate."""
