//! A seccompiler program rearranged so that a syscall number finds its rules by binary search.
//!
//! seccompiler compiles a filter to one linear chain: the architecture check, the load of the
//! syscall number, then one block per syscall in ascending number order, each starting with
//! `JEQ nr`, and the mismatch return. A syscall with no block compares against every block
//! before it reaches that return, and so does the kernel when a thread installs the filter: to
//! fill its cache of syscalls that are always allowed (`seccomp_cache_prepare`), it emulates the
//! program once for every syscall number of each architecture. With the 99 syscalls of the vmm
//! filter that emulation made most of the install's cost (0.23 ms of a 0.23 ms install on the
//! development host, 0.07 ms without it), paid by every thread at start, on the boot and
//! restore critical path; and each syscall of a running thread walked the chain up to its block.
//!
//! [`to_search_tree`] keeps seccompiler's blocks as they are and puts a balanced tree of `JGE`
//! comparisons in front of them: a syscall number reaches the only block that can match it after
//! ⌈log2 n⌉ comparisons, and a number with no block leaves that block by its own `JEQ` for the
//! mismatch return placed after it. A block jumps only inside itself and every path in it ends
//! in a return, except the "not this syscall" path, which leaves at the block's end: that is
//! checked, so a program of any other shape is refused rather than rearranged.
//!
//! This file is also compiled into `build.rs` (which rearranges the built-in filters at build
//! time), so it uses nothing but `std` and seccompiler's `sock_filter`.

use seccompiler::sock_filter;

/// `BPF_LD | BPF_W | BPF_ABS`: load a 32-bit word of `struct seccomp_data`.
const LD_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`: jump `k` instructions forward.
const JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE: u16 = 0x35;
/// `BPF_RET | BPF_K`.
const RET: u16 = 0x06;
/// Offset of `arch` in `struct seccomp_data`.
const ARCH_OFFSET: u32 = 4;
/// Offset of `nr` in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
const MAX_LEN: usize = 4096;

/// One syscall's block of a seccompiler program.
struct Block<'a> {
    nr: u32,
    body: &'a [sock_filter],
}

/// `linear` (seccompiler's output) with a binary search on the syscall number in front of its
/// blocks. Decides every syscall exactly as `linear` does.
pub fn to_search_tree(linear: &[sock_filter]) -> Result<Vec<sock_filter>, String> {
    let arch_check = linear
        .get(..3)
        .ok_or("shorter than the architecture check")?;
    if arch_check[0].code != LD_ABS || arch_check[0].k != ARCH_OFFSET {
        return Err("it does not start by loading the architecture".into());
    }
    match linear.get(3) {
        // No syscall rules: one return after the architecture check.
        Some(i) if i.code == RET && linear.len() == 4 => return Ok(linear.to_vec()),
        Some(i) if i.code == LD_ABS && i.k == NR_OFFSET => {}
        _ => return Err("instruction 3 does not load the syscall number".into()),
    }
    let (mut blocks, mut at) = (Vec::new(), 4);
    let mismatch = loop {
        let insn = linear
            .get(at)
            .ok_or("the program ends inside its list of syscalls")?;
        if insn.code == RET {
            if at + 1 != linear.len() {
                return Err(format!("instructions follow the final return at {at}"));
            }
            break insn.clone();
        }
        let end = block_end(linear, at)?;
        if blocks.last().is_some_and(|b: &Block| b.nr >= insn.k) {
            return Err(format!("the syscall at {at} is out of ascending order"));
        }
        blocks.push(Block {
            nr: insn.k,
            body: &linear[at..end],
        });
        at = end;
    };
    let mut out = linear[..4].to_vec();
    if blocks.is_empty() {
        out.push(mismatch);
    } else {
        append_tree(&blocks, &mismatch, &mut out);
    }
    if out.len() > MAX_LEN {
        return Err(format!("the tree has {} instructions", out.len()));
    }
    Ok(out)
}

/// Where the block starting at `start` ends: the instruction its "not this syscall" path reaches
/// (the block's `JEQ nr, 0, 1` skips one instruction, then `JA`s hop over the block's rules).
/// Checks that nothing else in the block jumps to or past that end and that its last instruction
/// is a return, so that moving the block cannot change what it decides.
fn block_end(p: &[sock_filter], start: usize) -> Result<usize, String> {
    let head = &p[start];
    if head.code != JEQ || head.jt != 0 || head.jf != 1 {
        return Err(format!(
            "instruction {start} is not a syscall number comparison"
        ));
    }
    let mut hops = vec![start];
    let mut at = start + 2;
    while let Some(hop) = p.get(at).filter(|i| i.code == JA) {
        hops.push(at);
        at = at
            .checked_add(1 + hop.k as usize)
            .filter(|&t| t <= p.len())
            .ok_or_else(|| format!("the jump at {at} leaves the program"))?;
    }
    let end = at;
    if end < start + 3 || p[end - 1].code != RET {
        return Err(format!("the block at {start} does not end in a return"));
    }
    for (i, insn) in p.iter().enumerate().take(end).skip(start) {
        if hops.contains(&i) {
            continue;
        }
        let targets = match insn.code {
            JA => [insn.k as usize, insn.k as usize],
            c if c & 0x07 == JA => [insn.jt.into(), insn.jf.into()],
            _ => continue,
        };
        if targets.iter().any(|&t| i + 1 + t >= end) {
            return Err(format!("instruction {i} jumps out of the block at {start}"));
        }
    }
    Ok(end)
}

/// Appends a search over `blocks` (ascending, not empty): `JGE` on the first number of the upper
/// half, the lower half, the upper half; a leaf is the block followed by the mismatch return.
fn append_tree(blocks: &[Block], mismatch: &sock_filter, out: &mut Vec<sock_filter>) {
    if let [block] = blocks {
        out.extend_from_slice(block.body);
        out.push(mismatch.clone());
        return;
    }
    let (lower, upper) = blocks.split_at(blocks.len() / 2);
    let mut below = Vec::new();
    append_tree(lower, mismatch, &mut below);
    let jge = |jt, jf| sock_filter {
        code: JGE,
        jt,
        jf,
        k: upper[0].nr,
    };
    match u8::try_from(below.len()) {
        Ok(skip) => out.push(jge(skip, 0)),
        Err(_) => {
            out.push(jge(0, 1));
            out.push(sock_filter {
                code: JA,
                jt: 0,
                jf: 0,
                k: below.len() as u32,
            });
        }
    }
    out.extend(below);
    append_tree(upper, mismatch, out);
}

/// A classic BPF interpreter for what seccomp programs use, to check decisions in tests.
#[cfg(test)]
pub(crate) mod interpreter {
    use super::*;

    /// `AUDIT_ARCH_X86_64`.
    pub const X86_64: u32 = 0xc000_003e;
    /// `AUDIT_ARCH_I386`.
    pub const I386: u32 = 0x4000_0003;

    /// `struct seccomp_data` as the filter sees it.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Data {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                16..=63 => {
                    let arg = self.args[(offset as usize - 16) / 8];
                    if offset % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load of offset {offset}"),
            }
        }
    }

    /// The return value of `program` for `data` and the number of instructions it ran.
    pub fn run(program: &[sock_filter], data: &Data) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &program[pc];
            steps += 1;
            pc += 1;
            let taken = |jt: u8, jf: u8, cond: bool| usize::from(if cond { jt } else { jf });
            match i.code {
                LD_ABS => a = data.word(i.k),
                0x54 => a &= i.k,
                RET => return (i.k, steps),
                JA => pc += i.k as usize,
                JEQ => pc += taken(i.jt, i.jf, a == i.k),
                JGE => pc += taken(i.jt, i.jf, a >= i.k),
                0x25 => pc += taken(i.jt, i.jf, a > i.k),
                0x45 => pc += taken(i.jt, i.jf, a & i.k != 0),
                c => panic!("opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    /// Asserts both programs return the same for every syscall number of both architectures
    /// and, for syscalls with a block, for arguments around every constant the program uses.
    pub fn assert_same_decisions(linear: &[sock_filter], tree: &[sock_filter]) {
        let values = constants(linear);
        let mut checked = 0usize;
        for arch in [X86_64, I386] {
            for nr in (0..600).chain([0x4000_0000, 0x4000_0001, 0x7fff_ffff, u32::MAX]) {
                let mut data = Data {
                    nr,
                    arch,
                    args: [0; 6],
                };
                let want = run(linear, &data).0;
                assert_eq!(run(tree, &data).0, want, "nr {nr} arch {arch:#x}");
                checked += 1;
                if arch != X86_64 || !linear.iter().any(|i| i.code == JEQ && i.k == nr) {
                    continue;
                }
                for index in 0..6 {
                    for &low in &values {
                        for high in [0, low, 1, u32::MAX] {
                            data.args = [0; 6];
                            data.args[index] = u64::from(high) << 32 | u64::from(low);
                            let want = run(linear, &data).0;
                            assert_eq!(run(tree, &data).0, want, "{data:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1200);
    }

    /// The mean number of instructions run for syscall numbers 0..600 (native architecture,
    /// arguments 0): the cost of finding a syscall's rules, for most numbers none.
    pub fn mean_steps(program: &[sock_filter]) -> f64 {
        let total: usize = (0..600)
            .map(|nr| {
                let data = Data {
                    nr,
                    arch: X86_64,
                    args: [0; 6],
                };
                run(program, &data).1
            })
            .sum();
        total as f64 / 600.0
    }

    /// Every constant a program compares with or masks by: the values worth trying as
    /// arguments (with their neighbours).
    pub fn constants(program: &[sock_filter]) -> Vec<u32> {
        let mut out: Vec<u32> = program
            .iter()
            .filter(|i| i.code != LD_ABS && i.code != RET && i.code != JA)
            .flat_map(|i| [i.k, i.k.wrapping_sub(1), i.k.wrapping_add(1)])
            .chain([0, u32::MAX])
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::interpreter::{assert_same_decisions, mean_steps, X86_64};
    use super::*;

    fn linear(json: &str) -> Vec<sock_filter> {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let mut map = seccompiler::compile_from_json(json.as_bytes(), arch).unwrap();
        map.remove("t").unwrap()
    }

    /// A filter with every kind of rule seccompiler makes: a syscall with no condition, one
    /// with two rules, dword and qword conditions with each operator, and many syscalls.
    fn sample() -> String {
        let mut filter = vec![
            r#"{"syscall": "read"}"#.to_string(),
            r#"{"syscall": "ioctl", "args": [{"index": 1, "type": "dword", "op": "eq", "val": 44672}]}"#.into(),
            r#"{"syscall": "ioctl", "args": [{"index": 1, "type": "qword", "op": {"masked_eq": 15}, "val": 3}, {"index": 2, "type": "qword", "op": "ge", "val": 4294967300}]}"#.into(),
            r#"{"syscall": "mmap", "args": [{"index": 2, "type": "qword", "op": "le", "val": 7}, {"index": 3, "type": "dword", "op": "ne", "val": 1}]}"#.into(),
            r#"{"syscall": "futex", "args": [{"index": 0, "type": "qword", "op": "gt", "val": 5}, {"index": 5, "type": "qword", "op": "lt", "val": 9}]}"#.into(),
        ];
        for name in [
            "write",
            "close",
            "openat",
            "epoll_wait",
            "exit",
            "exit_group",
            "brk",
            "munmap",
            "madvise",
            "rt_sigreturn",
            "sigaltstack",
            "fcntl",
            "accept4",
            "recvfrom",
        ] {
            filter.push(format!(r#"{{"syscall": "{name}"}}"#));
        }
        format!(
            r#"{{"t": {{"mismatch_action": "kill_process", "match_action": "allow", "filter": [{}]}}}}"#,
            filter.join(",")
        )
    }

    #[test]
    fn the_tree_decides_as_the_linear_program() {
        let linear = linear(&sample());
        let tree = to_search_tree(&linear).unwrap();
        assert_ne!(tree.len(), linear.len());
        assert_same_decisions(&linear, &tree);
    }

    #[test]
    fn a_syscall_number_walks_a_logarithmic_path() {
        let linear = linear(&sample());
        let tree = to_search_tree(&linear).unwrap();
        let (t, l) = (mean_steps(&tree), mean_steps(&linear));
        eprintln!("mean instructions per syscall: tree {t:.1}, linear {l:.1}");
        // 19 syscalls: 4 for the architecture and the number, 4-5 levels of JGE, the leaf's JEQ,
        // its hops and the return; the linear chain compares with every block.
        assert!(t < 14.0, "tree: {t}");
        assert!(l > 40.0, "linear: {l}");
    }

    #[test]
    fn programs_of_another_shape_are_refused() {
        let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        let arch = [
            insn(LD_ABS, 0, 0, ARCH_OFFSET),
            insn(JEQ, 1, 0, X86_64),
            insn(RET, 0, 0, 0),
        ];
        let with = |rest: &[sock_filter]| {
            let mut p = arch.to_vec();
            p.extend_from_slice(rest);
            to_search_tree(&p)
        };
        let nr = || insn(LD_ABS, 0, 0, NR_OFFSET);
        let allow = || insn(RET, 0, 0, 0x7fff_0000);
        let kill = || insn(RET, 0, 0, 0);
        // No rules: kept as it is.
        assert_eq!(with(&[kill()]).unwrap().len(), 4);
        assert!(with(&[]).is_err());
        assert!(with(&[insn(LD_ABS, 0, 0, 16), kill()]).is_err());
        // A comparison that is not seccompiler's `JEQ nr, 0, 1`.
        let e = with(&[nr(), insn(JEQ, 1, 0, 3), allow(), kill()]).unwrap_err();
        assert!(e.contains("not a syscall number comparison"), "{e}");
        // A rule that jumps to the next block (its A is an argument by then).
        let e = with(&[
            nr(),
            insn(JEQ, 0, 1, 3),
            insn(JA, 0, 0, 1),
            insn(JA, 0, 0, 2),
            insn(JEQ, 1, 0, 0),
            kill(),
            kill(),
        ])
        .unwrap_err();
        assert!(e.contains("jumps out of the block"), "{e}");
        // A hop past the end, blocks out of order, a tail after the final return.
        assert!(with(&[
            nr(),
            insn(JEQ, 0, 1, 3),
            insn(JA, 0, 0, 1),
            insn(JA, 0, 0, 9)
        ])
        .is_err());
        let block = |n| {
            [
                insn(JEQ, 0, 1, n),
                insn(JA, 0, 0, 1),
                insn(JA, 0, 0, 2),
                allow(),
                kill(),
            ]
        };
        let mut p = vec![nr()];
        p.extend(block(5));
        p.extend(block(3));
        p.push(kill());
        assert!(with(&p).unwrap_err().contains("ascending"));
        let mut p = vec![nr()];
        p.extend(block(3));
        p.extend([kill(), kill()]);
        assert!(with(&p).unwrap_err().contains("follow the final return"));
    }
}
