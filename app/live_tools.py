"""The Live tab's canvas toolbar: brush, eraser, colour, size, clear, undo and redo, show
sketch, smooth, open and save, and the copy/paste/open/save shortcuts on the canvas. A mixin
of LiveTab (app/live_tab.py), which owns the widgets it builds."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QColor, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QColorDialog,
    QHBoxLayout,
    QSpinBox,
    QToolButton,
)


class CanvasToolsMixin:
    """Builds, lays out and connects the canvas toolbar; keeps the canvas and settings in step."""

    def _build_canvas_tools(self) -> None:
        self.brush_button = self._tool_button("Brush", "Draw on the sketch layer (B)", "B")
        self.eraser_button = self._tool_button("Eraser", "Erase the sketch layer (E)", "E")
        self.brush_button.setChecked(True)
        tools = QButtonGroup(self)
        tools.setExclusive(True)
        tools.addButton(self.brush_button)
        tools.addButton(self.eraser_button)
        self.colour_button = self._tool_button("Colour", "Brush colour", checkable=False)
        self._show_colour()
        self.size_spin = QSpinBox()
        self.size_spin.setRange(1, 64)
        self.size_spin.setValue(self.canvas.brush_size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush size in sketch pixels (the sketch is 256 px).")
        self.clear_button = self._tool_button("Clear", "Clear the sketch (undoable)",
                                              checkable=False)
        stack = self.canvas.undo_stack
        self.undo_action = QAction("Undo", self)
        self.undo_action.setToolTip("Undo the last stroke (Ctrl+Z)")
        self.undo_action.setShortcuts([QKeySequence("Ctrl+Z")])
        self.undo_action.triggered.connect(stack.undo)
        self.undo_action.setEnabled(False)
        stack.canUndoChanged.connect(self.undo_action.setEnabled)
        self.redo_action = QAction("Redo", self)
        self.redo_action.setToolTip("Redo (Ctrl+Shift+Z)")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.redo_action.triggered.connect(stack.redo)
        self.redo_action.setEnabled(False)
        stack.canRedoChanged.connect(self.redo_action.setEnabled)
        for action in (self.undo_action, self.redo_action):
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            self.addAction(action)
        self.undo_button, self.redo_button = QToolButton(), QToolButton()
        self.undo_button.setDefaultAction(self.undo_action)
        self.redo_button.setDefaultAction(self.redo_action)
        self.show_sketch_box = QCheckBox("Show sketch")
        self.show_sketch_box.setChecked(True)
        self.smooth_box = QCheckBox("Smooth")
        self.smooth_box.setToolTip("Scale the frame smoothly to the canvas; off shows its "
                                   "pixels as squares.")
        self.smooth_box.setChecked(self.settings.smooth_display)
        self.canvas.smooth = self.settings.smooth_display
        self.open_button = self._tool_button("Open image…", "Open an image to edit (Ctrl+O)",
                                             checkable=False)
        self.save_image_button = self._tool_button(
            "Save image…", "Save the frame as PNG, with its recipe (Ctrl+S)", checkable=False)
        self.save_sketch_button = self._tool_button("Save sketch…", "Save the sketch as PNG",
                                                    checkable=False)
        self.copy_action = self._action("Copy image", "Ctrl+Shift+C", self.copy_frame)
        self.paste_action = self._action("Paste image to edit", "Ctrl+Shift+V", self.paste_image)
        self.canvas.addActions([
            self.copy_action, self.paste_action,
            self._action("Open image to edit…", "Ctrl+O", self._open_image_dialog),
            self._action("Save image…", "Ctrl+S", lambda: self._save_dialog("image")),
        ])

    def _tool_button(self, text: str, tip: str, shortcut: str = "",
                     checkable: bool = True) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        if shortcut:
            button.setShortcut(QKeySequence(shortcut))
        return button

    def _action(self, text: str, shortcut: str, slot) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.setToolTip(f"{text} ({shortcut})")
            self.addAction(action)
        action.triggered.connect(slot)
        return action

    def _canvas_tools_row(self) -> QHBoxLayout:
        tools = QHBoxLayout()
        for widget in (self.brush_button, self.eraser_button, self.colour_button, self.size_spin,
                       self.clear_button, self.undo_button, self.redo_button,
                       self.show_sketch_box, self.smooth_box):
            tools.addWidget(widget)
        tools.addStretch(1)
        for widget in (self.open_button, self.save_image_button, self.save_sketch_button):
            tools.addWidget(widget)
        return tools

    def _connect_canvas_tools(self) -> None:
        self.brush_button.toggled.connect(self._on_tool_changed)
        self.colour_button.clicked.connect(self._pick_colour)
        self.size_spin.valueChanged.connect(self._on_size_changed)
        self.clear_button.clicked.connect(self.canvas.clear_sketch)
        self.show_sketch_box.toggled.connect(self._on_show_sketch)
        self.smooth_box.toggled.connect(self._on_smooth_toggled)
        self.open_button.clicked.connect(self._open_image_dialog)
        self.save_image_button.clicked.connect(lambda: self._save_dialog("image"))
        self.save_sketch_button.clicked.connect(lambda: self._save_dialog("sketch"))

    def _on_tool_changed(self) -> None:
        self.canvas.erasing = self.eraser_button.isChecked()

    def _on_size_changed(self, size: int) -> None:
        self.canvas.brush_size = size
        self.settings.brush_size = size

    def _on_show_sketch(self, shown: bool) -> None:
        self.canvas.show_sketch = shown
        self.canvas.update()

    def _on_smooth_toggled(self, smooth: bool) -> None:
        self.canvas.smooth = self.settings.smooth_display = smooth
        self.canvas.update()

    def _show_colour(self) -> None:
        swatch = QPixmap(16, 16)
        swatch.fill(self.canvas.brush_colour)
        self.colour_button.setIcon(QIcon(swatch))
        self.colour_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

    def _pick_colour(self) -> None:
        colour = QColorDialog.getColor(self.canvas.brush_colour, self, "Brush colour")
        if colour.isValid():
            self.set_brush_colour(colour)

    def set_brush_colour(self, colour: QColor) -> None:
        self.canvas.brush_colour = colour
        self.settings.brush_colour = colour.name()
        self._show_colour()
