from retrieval.pipeline.bootstrap import bootstrap_reduce_deep


def test_auto_reduces_the_deep_vector_on_cpu_and_keeps_the_paper_map_on_gpu(settings):
    settings.ILDREVIEW_BOOTSTRAP_REDUCE_DEEP = "auto"
    assert bootstrap_reduce_deep(device="cpu") == 32
    assert bootstrap_reduce_deep(device="cuda") is None


def test_none_keeps_the_full_map_and_a_number_is_used_as_given(settings):
    settings.ILDREVIEW_BOOTSTRAP_REDUCE_DEEP = "none"
    assert bootstrap_reduce_deep(device="cpu") is None
    settings.ILDREVIEW_BOOTSTRAP_REDUCE_DEEP = "64"
    assert bootstrap_reduce_deep(device="cuda") == 64
