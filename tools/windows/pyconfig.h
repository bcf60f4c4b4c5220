/* pyconfig.h for cross-compiling CPython 3.11 extensions for 64-bit Windows
 * with MinGW-w64 GCC (x86_64-w64-mingw32-gcc), linked straight against the
 * official python311.dll (MSVC build). Project-owned: tools/build-windows.sh
 * copies the host's Python 3.11 include folder and puts this file in it, since
 * Python.h includes "pyconfig.h" from its own folder first.
 * It mirrors what CPython's PC/pyconfig.h says for an MSVC x64 build, where it
 * matters for the ABI (type sizes, Py_ssize_t, DLL import/export). */
#ifndef Py_CONFIG_H
#define Py_CONFIG_H

#if !defined(_WIN64) || !defined(__MINGW64__)
#  error "this pyconfig.h is for x86_64-w64-mingw32 only"
#endif

/* Windows 8 API level: GetQueuedCompletionStatusEx, CancelIoEx,
 * SetFileCompletionNotificationModes need Vista+. */
#ifndef _WIN32_WINNT
#  define _WIN32_WINNT 0x0602
#endif
#ifndef NTDDI_VERSION
#  define NTDDI_VERSION 0x06020000
#endif
#define Py_WINVER _WIN32_WINNT
#define Py_NTDDI NTDDI_VERSION

#define MS_WIN32
#define MS_WIN64
#define MS_WINDOWS
#define NT_THREADS
#define WITH_THREAD
#define Py_ENABLE_SHARED 1          /* python311.dll */
#define HAVE_DECLSPEC_DLL           /* PyAPI_FUNC/DATA = __declspec(dllimport) */
#define PLATFORM "win32"
#define COMPILER "[GCC (MinGW-w64) " __VERSION__ "]"

#include <io.h>
#include <stdio.h>
#include <basetsd.h>

/* Type sizes of the LLP64 model, as the MSVC build of python311.dll has them. */
#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_DOUBLE 8
#define SIZEOF_FLOAT 4
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_HKEY 8
#define SIZEOF_WCHAR_T 2
#define SIZEOF__BOOL 1
#define SIZEOF_PID_T SIZEOF_INT
#define ALIGNOF_SIZE_T 8
#define ALIGNOF_MAX_ALIGN_T 8
#define HAVE_LARGEFILE_SUPPORT

/* Py_ssize_t is 64-bit (not long, which is 32-bit here). */
typedef __int64 Py_ssize_t;
#define PY_SSIZE_T_MAX LLONG_MAX
typedef Py_ssize_t Py_hash_t;
#define HAVE_PY_SSIZE_T 1
#define Py_LL(x) x##LL
#define Py_ULL(x) Py_LL(x##U)
#define PY_LONG_LONG long long
#define HAVE_LONG_LONG 1
#define PY_LLONG_MIN LLONG_MIN
#define PY_LLONG_MAX LLONG_MAX
#define PY_ULLONG_MAX ULLONG_MAX

#define PY_UINT32_T uint32_t
#define PY_UINT64_T uint64_t
#define PY_INT32_T int32_t
#define PY_INT64_T int64_t

/* Python 3.11 on Windows: 30-bit digits, IEEE doubles, little-endian. */
#define PYLONG_BITS_IN_DIGIT 30
#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1
#define HAVE_COPYSIGN 1
#define HAVE_ROUND 1
#define HAVE_HYPOT 1
#define HAVE_ERF 1
#define HAVE_ERFC 1
#define HAVE_TGAMMA 1
#define HAVE_LGAMMA 1

#define HAVE_DYNAMIC_LOADING
#define HAVE_STDARG_PROTOTYPES
#define HAVE_ERRNO_H 1
#define HAVE_FCNTL_H 1
#define HAVE_SIGNAL_H 1
#define HAVE_STDDEF_H 1
#define HAVE_WCHAR_H 1
#define HAVE_PROCESS_H 1
#define HAVE_DIRECT_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_STRFTIME 1
#define HAVE_CLOCK 1
#define HAVE_FTIME 1
#define HAVE_GETPID 1
#define HAVE_PUTENV 1
#define HAVE_TZNAME 1
#define HAVE_WCSCOLL 1
#define HAVE_WCSFTIME 1
#define HAVE_WCSXFRM 1
#define HAVE_ZLIB_COPY 1
#define HAVE_X509_VERIFY_PARAM_SET1_HOST 1
#define WITH_DOC_STRINGS 1
#define WITH_PYMALLOC 1
#define Py_DEBUG_NOT_DEFINED 1
#define WORD_BIT 32
#define USE_SOCKET 1

#endif /* Py_CONFIG_H */
