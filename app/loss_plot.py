"""A small QPainter line plot of training losses over steps (no plotting dependency)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
MAX_POINTS = 5000  # per series; older points are thinned by half when exceeded


class LossPlot(QWidget):
    """One line per loss name; x is the training step, y is linear with a padded range."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumSize(240, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 220)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add_point(self, step: float, losses: dict) -> None:
        """Append one value per loss name; non-numbers and non-finite values are skipped."""
        for name, value in losses.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            points = self.series.setdefault(str(name), [])
            points.append((float(step), float(value)))
            if len(points) > MAX_POINTS:
                del points[::2]
        self.update()

    def _ranges(self) -> tuple[float, float, float, float]:
        xs = [x for points in self.series.values() for x, _ in points]
        ys = [y for points in self.series.values() for _, y in points]
        x_low, x_high = min(xs), max(xs)
        y_low, y_high = min(ys), max(ys)
        if x_high == x_low:
            x_high = x_low + 1
        pad = (y_high - y_low) * 0.08 or max(abs(y_high) * 0.1, 1e-3)
        return x_low, x_high, y_low - pad, y_high + pad

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.fillRect(self.rect(), QColor("white"))
        plot = QRectF(self.rect()).adjusted(52, 10, -10, -26)
        painter.setPen(QColor("#999999"))
        painter.drawRect(plot)
        if not any(self.series.values()):
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "Losses appear here")
            painter.end()
            return
        x_low, x_high, y_low, y_high = self._ranges()

        def to_screen(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x_low) / (x_high - x_low) * plot.width(),
                           plot.bottom() - (y - y_low) / (y_high - y_low) * plot.height())

        # axis labels: y range and x range
        painter.setPen(QColor("#444444"))
        metrics = painter.fontMetrics()
        for value, y in ((y_high, plot.top()), (y_low, plot.bottom())):
            text = f"{value:.3g}"
            painter.drawText(QPointF(plot.left() - metrics.horizontalAdvance(text) - 4,
                                     y + metrics.ascent() / 2), text)
        painter.drawText(QPointF(plot.left(), plot.bottom() + metrics.height()), f"{x_low:.0f}")
        last = f"step {x_high:.0f}"
        painter.drawText(QPointF(plot.right() - metrics.horizontalAdvance(last),
                                 plot.bottom() + metrics.height()), last)
        # lines and legend
        legend_x = plot.left() + 6
        for index, (name, points) in enumerate(sorted(self.series.items())):
            colour = QColor(PALETTE[index % len(PALETTE)])
            painter.setPen(QPen(colour, 1.5))
            path = QPainterPath(to_screen(*points[0]))
            for point in points[1:]:
                path.lineTo(to_screen(*point))
            painter.drawPath(path)
            label = f"{name} {points[-1][1]:.3g}"
            painter.drawText(QPointF(legend_x, plot.top() + metrics.height()), label)
            legend_x += metrics.horizontalAdvance(label) + 12
        painter.end()
