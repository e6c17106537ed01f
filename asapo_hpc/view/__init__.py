"""``asapo-hpc view``: a local web page showing the newest raw frame and integrated profile.

Endpoints: ``/`` (the page, everything inline), ``/frame.png`` (the newest raw frame,
downsampled to at most ``max_size`` pixels a side, percentile-clipped log or linear colour
scale; header ``X-Frame-Id``), ``/profile.json`` (the newest profile: ``id``, ``unit``,
``npt``, ``radial``, ``intensity``, ``sigma``), ``/status.json`` (ids, rates, errors of both
sources). Reads are latest-value reads (``Consumer.get_last``) taken only when something new
was published: the view never holds a producer back and skips what it cannot show.

Raw frames: meta ``{"shape": [h, w], "dtype": "uint16"}`` (or the ``--shape`` / ``--dtype``
defaults; a shape of more than two dimensions is shown as its modules stacked vertically).
Datasets (a detector frame published as one part per module, as the Lambda 9M simulator
does): the frame shown is the newest id whose parts are all still in the ring, its modules
placed by the detector layout (``--layout``, or the shipped example layout when the parts'
metadata name its modules) or else stacked; the page says "12 of 12 parts". See
:mod:`asapo_hpc.view.assemble`.
Profiles: see :mod:`asapo_hpc.view.profile`.
"""

from __future__ import annotations

from asapo_hpc.view.render import Scale
from asapo_hpc.view.server import ViewConfig, ViewServer

__all__ = ["Scale", "ViewConfig", "ViewServer"]
