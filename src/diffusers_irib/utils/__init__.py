"""What the console commands, the web page and the evaluation share, one job per module.

``errors`` (one-line errors), ``arguments`` (argument types and shared flags), ``pipeline_arguments``
(the pipeline's options and limits), ``image_files`` (reading users' images), ``output_files`` (input
lists, output plans, atomic writes), ``model_sources`` (finding the models). Nothing here imports
torch, diffusers or transformers at module level, so ``--help`` answers at once.
"""
