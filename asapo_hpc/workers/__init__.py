"""Workers: Numba kernels that reduce detector frames, each with a plain NumPy reference
(``stitch_reference``, ``azint.reference``) the tests compare against.

``stitch.Stitcher`` assembles module parts into one image (gaps, mask, flatfield,
large-pixel correction); ``azint.AzimuthalIntegrator`` integrates radially in pyFAI's
conventions (no split, bbox, full split). They depend on numpy, numba, the geometry and the
detector model only, never on the ring."""
