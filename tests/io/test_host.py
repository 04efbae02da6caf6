"""The machine's CPU model as the calibration names it, and the committed CPU profile chosen by it."""

from moesim.execute.command import CPU_PROFILES, default_cpu_profile
from moesim.io.host import cpu_model, cpu_rank_description
from moesim.io.profile import load_profile, resolve_profile


def test_cpu_model_reads_the_first_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nprocessor\t: 1\n"
                    "model name\t: Other\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Processor"
    assert cpu_rank_description("AMD EPYC") == "CPU rank: AMD EPYC, 1 thread"
    assert cpu_model(tmp_path / "missing")  # no /proc/cpuinfo: the platform's name, never empty


def test_the_default_cpu_profile_is_the_one_measured_on_this_cpu_model():
    for names in CPU_PROFILES.values():  # every listed profile is committed and names the CPU it was measured on
        for name in names:
            assert load_profile(resolve_profile(name)).gpu.name.startswith("CPU rank: ")
    assert default_cpu_profile(2, "AMD EPYC") == "cpu-gloo-2c-2r"
    assert default_cpu_profile(2, "Intel(R) Xeon(R) Processor") == "cpu-gloo-2c-2r-xeon"
    assert default_cpu_profile(2, "Some other CPU") == "cpu-gloo-2c-2r"  # none measured there: the default
    assert default_cpu_profile(4, "Intel(R) Xeon(R) Processor") == "cpu-gloo-2c"
    assert default_cpu_profile(3, "AMD EPYC") == "cpu-gloo-2c"  # the nearest rank count above
