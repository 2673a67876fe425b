"""``python -m recbole_mm.benchmark``; the ``--cell`` form is how the runner starts each cell's process."""

from recbole_mm.benchmark.command import main
from recbole_mm.cli import use_huge_pages
from recbole_mm.errors import exit_on_user_error

if __name__ == "__main__":
    use_huge_pages()  # the plan's process, and through its environment every cell's
    exit_on_user_error(main)
