"""DMD Studio desktop app: python main.py [--model PATH] [--backend torch|onnx]
[--screenshot FILE] [--prompt TEXT].

Wires QApplication, settings, the engine service and the main window (app.main_window.
run_app, also the `dmd-studio` console script); nothing else lives here.
"""

import sys

from app.main_window import run_app

if __name__ == "__main__":
    sys.exit(run_app(sys.argv[1:]))
