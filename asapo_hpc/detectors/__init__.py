"""Detector models: the Lambda 9M layout (modules, translations, gaps, masks, flatfields,
large pixels; from configuration or the modules' NeXus files), synthetic powder frames,
and the simulator that publishes them (``asapo-hpc simulate``). Geometry is data here,
never a constant; ``lambda9m`` and ``frames`` need numpy only, ``simulator`` also the ring
clients."""
