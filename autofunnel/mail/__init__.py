"""Emails: templates (Jinja2 sandbox, front matter), and later rendering and transports."""
