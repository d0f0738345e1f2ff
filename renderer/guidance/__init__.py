"""The CLIP-steered family's shared machinery.

``loop`` is the one optimisation loop (Adam, learning-rate schedules, autocast,
checkpoints with bit-identical resume, progress frames, timelapse); ``host``
the render every generator of the family shares (settings, CLIP models, prompt
and symmetry terms, init images) around a generator's :class:`~renderer.guidance.host.Canvas`;
``video`` writes moving pieces (H.264 MP4, GIF).
"""
