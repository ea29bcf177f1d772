"""The Gradio page around a :class:`~segmentation.demo.app.DemoApp` (``lposs demo`` serves it:
:mod:`segmentation.commands.demo`).

Gradio is an optional extra (``pip install "lposs[demo]"``), imported only when a page is built.
"""

from __future__ import annotations

import os

from ..examples import DEFAULT_CLASSES, EXAMPLE_IMAGE
from ..methods import available_methods
from .app import SETTINGS, DemoApp, DemoInputError

__all__ = ["build_app", "launch"]

STAGE_TEXT = {
    "preprocess": "preparing the image", "vlm": "CLIP features (network 1/2)", "vm": "DINO features (network 2/2)",
    "text": "text embeddings", "patch propagation": "patch propagation", "pixel propagation": "pixel propagation",
    "render": "drawing the overlay",
}


def _import_gradio():
    """Gradio, with its usage analytics off (nothing the demo does may reach the network)."""
    from encoders._optional import require

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return require("gradio", feature="the demo", extra="demo")


def build_app(app: DemoApp, *, method: str = "LPOSS+", notice: str | None = None, title: str = "LPOSS demo"):
    """The Gradio page around ``app``.

    Parameters
    ----------
    app : DemoApp
        The page's logic (encoders, settings, cache).
    method : str
        The display name of the method selected when the page opens (one of the registered
        methods, :mod:`segmentation.methods`; the page lists them all).
    notice : str, optional
        A line shown under the title (e.g. that the networks have random weights).
    title : str
        The browser tab's title.

    Returns
    -------
    gradio.Blocks
    """
    gr = _import_gradio()
    defaults = app.default_settings
    methods = available_methods()
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown("## LPOSS: segment your image with your own words\nUpload an image, name the classes, "
                    "press **Segment**. Changing only the classes, the method or the settings re-uses the image's "
                    "network features, so it answers in the time of text + propagation.")
        if notice:
            gr.Markdown(f"**{notice}**", elem_id="lposs-notice")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload"],
                                 elem_id="lposs-image")
                classes = gr.Textbox(label="Class names", placeholder="road, car, sky;cloud", elem_id="lposs-classes",
                                     info="',' between classes, ';' between synonyms of one class (Enter runs)")
                chosen = gr.Radio([m.display_name for m in methods], value=method, label="Method",
                                  elem_id="lposs-method",
                                  info="; ".join(f"{m.display_name}: {m.description}" for m in methods))
                with gr.Accordion("Settings (published defaults)", open=False):
                    k = gr.Slider(1, 1000, value=defaults["k"], step=1, label="k: neighbours per patch")
                    alpha = gr.Slider(0.5, 0.99, value=defaults["alpha"], step=0.01,
                                      label="alpha: propagation strength")
                    tau = gr.Slider(0.001, 0.1, value=defaults["tau"], step=0.001, label="tau: pixel edge temperature")
                    window = gr.Slider(3, 31, value=defaults["pixel_window"], step=2, label="pixel window (LPOSS+)")
                    reset = gr.Button("Reset settings", size="sm", elem_id="lposs-reset")
                run = gr.Button("Segment", variant="primary", elem_id="lposs-run")
                gr.Examples([[str(EXAMPLE_IMAGE), DEFAULT_CLASSES]], inputs=[image, classes],
                            label="Example shipped with lposs (scikit-learn's china.jpg, CC BY 2.0)")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="filepath", format="png", interactive=False,
                                   buttons=["fullscreen"], elem_id="lposs-overlay")  # downloads are below
                legend = gr.HTML(elem_id="lposs-legend")
                downloads = gr.File(label="Downloads: label PNG (pixel value = class index) and overlay",
                                    file_count="multiple", interactive=False, elem_id="lposs-downloads")
                status = gr.Markdown(f"Networks ran {app.encode_count} time(s) since the server started.",
                                     elem_id="lposs-status")

        # gr.Progress() as the default is Gradio's documented way to ask for its progress tracker
        def segment(upload, text, method_name, k_value, alpha_value, tau_value, window_value, progress=gr.Progress()):  # noqa: B008
            # the inputs arrive unprocessed (preprocess=False): the upload is Gradio's file record, its path
            # in Gradio's upload folder; the app opens it itself and says on the page what is wrong with it
            path = upload.get("path") if isinstance(upload, dict) else None
            settings = {"k": k_value, "alpha": alpha_value, "tau": tau_value, "pixel_window": window_value}
            try:
                order = app.stage_order(method_name)

                def on_stage(name: str) -> None:
                    progress((order.index(name), len(order)), desc=STAGE_TEXT.get(name, name), unit="stages")

                result = app.run(path, text, method_name, settings, on_stage=on_stage)
            except DemoInputError as error:
                raise gr.Error(str(error), print_exception=False) from None
            return (str(result.overlay_path), result.legend_html,
                    [str(result.labels_path), str(result.overlay_path)], result.status)

        inputs = [image, classes, chosen, k, alpha, tau, window]
        outputs = [overlay, legend, downloads, status]
        run.click(segment, inputs, outputs, concurrency_limit=1, preprocess=False)
        classes.submit(segment, inputs, outputs, concurrency_limit=1, preprocess=False)
        reset.click(lambda: tuple(defaults[name] for name in SETTINGS), outputs=[k, alpha, tau, window])
    return blocks


def launch(blocks, app: DemoApp, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the page: no share link, uploads capped in bytes too.

    Parameters
    ----------
    blocks : gradio.Blocks
        :func:`build_app`'s page.
    app : DemoApp
        Its ``max_pixels`` caps the upload size.
    host, port : str, int or None
        Where to serve (None: Gradio picks a free port).
    block : bool
        Wait until the server stops (False: return once it serves).

    Returns
    -------
    tuple
        Gradio's ``(app, local_url, share_url)``.
    """
    return blocks.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        quiet=True, show_error=True, ssr_mode=False, mcp_server=False, enable_monitoring=False,
        max_file_size=max(50_000_000, 8 * app.max_pixels),  # a 16-bit RGBA PNG without compression
    )


def __getattr__(name: str):
    # deprecated: the ``lposs demo`` command moved to segmentation.commands.demo (the page is the library
    # part; the command sits on it)
    if name in ("add_demo_arguments", "run_demo"):
        import warnings

        from ..commands import demo as command

        new = {"add_demo_arguments": "add_arguments", "run_demo": "run"}[name]
        warnings.warn(f"segmentation.demo.page.{name} is deprecated; use segmentation.commands.demo.{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(command, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
