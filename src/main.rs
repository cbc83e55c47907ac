/// sled and the proxy allocate on every request from several threads;
/// mimalloc handles that far better than the system allocator (it cut the
/// cold-session path's allocator time by more than half in profiles).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
