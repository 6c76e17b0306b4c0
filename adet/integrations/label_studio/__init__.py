"""A Label Studio ML backend: Label Studio sends tasks, EmbedMask answers with polygon or brush regions in the form
the project's label config asks for. ``backend.py`` is the HTTP protocol (on the service of ``adet.serve``),
``label_config.py`` reads the project's config, ``regions.py`` writes detections as Label Studio regions,
``task_images.py`` fetches a task's image under the backend's URL rules."""
