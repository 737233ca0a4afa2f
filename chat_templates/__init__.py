"""Shipped chat templates (`.jinja` files), installed as `dsprep.chat_templates`."""
