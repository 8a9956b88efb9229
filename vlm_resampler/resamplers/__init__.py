"""Resamplers: map one view's vision tokens [N, S, input_dim] to [N, S', latent_dimension].

One file per resampler type; `conf/resampler/<type>.yaml` names the class and every default.
"""
