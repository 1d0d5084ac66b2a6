"""``semisupseg serve``: the remote training server (optional extra ``semisupseg[server]``: FastAPI, uvicorn).

It hosts workspaces under one root folder and runs the same worker as the local path
(``semisupseg train`` as a child process, JSON-lines events) for a Slicer on another computer.
``security`` (token, paths), ``jobs`` (queue, processes, persisted state), ``app`` (the HTTP API),
``cli`` (the ``serve`` subcommand). Nothing here is imported by the rest of the engine.
"""
