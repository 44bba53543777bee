"""The figures of the paper (Fig. 1a, 1b, 1c, 2), the S matrix, the spectrum and the training
curves: pure functions from arrays to a :class:`matplotlib.figure.Figure`, and the writer.

Figures are built with the object-oriented API (``Figure()`` directly, never ``pyplot``), so they
need no GUI backend, never touch pyplot's global figure manager and work on a headless machine
(each call builds its own figure; rcParams are read, never changed). Nothing but
:func:`save_figure` (and :func:`write_figure`, through it) writes. A ``Figure`` made this way is not
registered with pyplot, so it needs no ``plt.close``. The conventions every figure follows are in
:mod:`conetool.plots.style`. Importing this package loads ``matplotlib`` itself (the key of a
figure reads its settings) but not ``matplotlib.figure``, ``matplotlib.axes`` or the Agg backend:
they load when a figure is drawn, so a rerun that draws nothing skips them.

- :mod:`~conetool.plots.distance`: Fig. 1a, Fig. 1b, the S matrix;
- :mod:`~conetool.plots.embedding`: Fig. 1c;
- :mod:`~conetool.plots.switch`: Fig. 2 and the training curves;
- :mod:`~conetool.plots.per_layer`: the velocity of each parameter group against step;
- :mod:`~conetool.plots.spectrum`: alignment, effective rank and label energy against step;
- :mod:`~conetool.plots.save`: writing a figure to a file (a PNG only when the file does not
  already hold it: :func:`write_figure`);
- :mod:`~conetool.plots.figure_key`: the key of what a figure shows, recorded in its PNG.
"""

from .distance import adjacent_figure, distance_to_reference_figure, matrix_figure
from .embedding import embedding_figure
from .per_layer import per_layer_figure
from .save import save_figure, write_figure
from .spectrum import spectrum_figure
from .switch import switch_figure, training_curves_figure

__all__ = [
    "adjacent_figure",
    "distance_to_reference_figure",
    "embedding_figure",
    "matrix_figure",
    "per_layer_figure",
    "save_figure",
    "spectrum_figure",
    "switch_figure",
    "training_curves_figure",
    "write_figure",
]
