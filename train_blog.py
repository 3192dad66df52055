"""Public face: ``python train_blog.py ...``, the BYOL batch-norm ablation (selfsup.cli.blog, also installed as
``selfsup-blog``)."""

from selfsup.cli.blog import CONFIGS, RANDOM_INIT, blog_params, main, run_blog

__all__ = ["CONFIGS", "RANDOM_INIT", "blog_params", "main", "run_blog"]

if __name__ == "__main__":
    main()
