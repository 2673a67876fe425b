"""The downloader's former name, kept so that ``python -m recbole_mm.datasets download ...`` (in older notes
and shell histories) still works; the code lives in :mod:`recbole_mm.download` (``recbole-mm download``)."""

from recbole_mm.download import main

if __name__ == "__main__":
    from recbole_mm.errors import exit_on_user_error

    exit_on_user_error(lambda: main(prog="python -m recbole_mm.datasets"))
