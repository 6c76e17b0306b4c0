"""The model's web page (``embedmask demo``; Gradio, the ``demo`` extra): ``page`` builds it over a detector,
``served`` runs it through ``embedmask serve``'s queue, ``space`` writes it as a Hugging Face Space."""
