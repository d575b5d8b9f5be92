"""Dreamy's studio: the Gradio page (``app.py``) as one module per tab over the ``dreamy`` core.
Handlers only check widget values, call one core function and shape its result for the page."""
