from warmserve.cli import run

run()
