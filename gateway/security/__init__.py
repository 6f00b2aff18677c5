"""Authentication and authorisation: passwords, tokens, sessions, CSRF, TOTP, permissions."""
